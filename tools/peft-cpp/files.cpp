#include "files.h"

#include <algorithm>
#include <fstream>

#include <unistd.h>

#include <peft/safetensors.h>

namespace peft_cli {

uint64_t BaseCheckpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& shard : shards) total += fs::file_size(dir / shard);
  return total;
}

namespace {

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw UserError("cannot read " + path.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw UserError(path.string() + " is not valid JSON: " + e.what());
  }
}

void map_single(BaseCheckpoint& base, const std::string& file) {
  base.shards = {file};
  for (const auto& item : peft::safetensors::load_file((base.dir / file).string())) base.shard_of[item.key()] = file;
}

}  // namespace

BaseCheckpoint open_base(const fs::path& path) {
  BaseCheckpoint base;
  if (!fs::exists(path)) throw UserError("base checkpoint " + path.string() + " does not exist");
  if (fs::is_regular_file(path)) {
    base.dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    base.single_file = true;
    map_single(base, path.filename().string());
    return base;
  }
  base.dir = path;
  std::vector<fs::path> indexes, files;
  for (const auto& entry : fs::directory_iterator(path)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 23 && name.compare(name.size() - 23, 23, ".safetensors.index.json") == 0) indexes.push_back(entry.path());
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
  }
  if (indexes.size() > 1) throw UserError(path.string() + " holds several *.safetensors.index.json files; name one shard set");
  if (indexes.size() == 1) {
    base.index = read_json(indexes.front());
    base.index_name = indexes.front().filename().string();
    const auto it = base.index->find("weight_map");
    if (it == base.index->end() || !it->is_object()) throw UserError(indexes.front().string() + " has no weight_map");
    for (const auto& [tensor, shard] : it->items()) {
      if (!shard.is_string()) throw UserError(indexes.front().string() + ": weight_map['" + tensor + "'] is not a file name");
      const std::string file = shard.get<std::string>();
      if (file.find('/') != std::string::npos || !fs::exists(path / file)) {
        throw UserError(indexes.front().string() + " names shard '" + file + "', which is not in " + path.string());
      }
      base.shard_of[tensor] = file;
      if (std::find(base.shards.begin(), base.shards.end(), file) == base.shards.end()) base.shards.push_back(file);
    }
    std::sort(base.shards.begin(), base.shards.end());
    return base;
  }
  if (fs::exists(path / "model.safetensors")) {
    map_single(base, "model.safetensors");
  } else if (files.size() == 1) {
    map_single(base, files.front().filename().string());
  } else {
    throw UserError(path.string() + " has no model.safetensors.index.json and " +
                    (files.empty() ? "no .safetensors file" : "several .safetensors files") + "; name the checkpoint file");
  }
  return base;
}

AdapterFiles open_adapter(const fs::path& path, bool require_config) {
  AdapterFiles adapter;
  if (!fs::exists(path)) throw UserError("adapter " + path.string() + " does not exist");
  if (fs::is_directory(path)) {
    adapter.dir = path;
    adapter.weights_file = path / "adapter_model.safetensors";
    if (!fs::exists(adapter.weights_file)) {
      if (fs::exists(path / "adapter_model.bin")) {
        throw UserError(path.string() + " holds adapter_model.bin (a pickle), which peft-cpp does not read; save it "
                        "as safetensors in Python (save_pretrained(..., safe_serialization=True))");
      }
      throw UserError(path.string() + " has no adapter_model.safetensors");
    }
  } else {
    adapter.dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    adapter.weights_file = path;
  }
  const fs::path config_file = adapter.dir / "adapter_config.json";
  if (fs::exists(config_file)) {
    adapter.config = peft::load_config(config_file.string());
  } else if (require_config) {
    throw UserError(adapter.dir.string() + " has no adapter_config.json");
  }
  adapter.weights = peft::safetensors::load_file(adapter.weights_file.string());
  return adapter;
}

c10::ScalarType parse_dtype(const std::string& name) {
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  if (name == "f16" || name == "fp16" || name == "float16") return at::kHalf;
  if (name == "f32" || name == "fp32" || name == "float32") return at::kFloat;
  throw UserError("unknown dtype '" + name + "' (use bf16, f16 or f32)");
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "f16";
    case at::kFloat: return "f32";
    case at::kDouble: return "f64";
    default: return c10::toString(dtype);
  }
}

std::vector<std::string> closest_names(const std::string& name, const std::vector<std::string>& candidates, size_t count) {
  auto distance = [](const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        const size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
        diagonal = up;
      }
    }
    return row[b.size()];
  };
  std::vector<std::pair<size_t, std::string>> scored;
  for (const auto& c : candidates) scored.emplace_back(distance(name, c), c);
  std::sort(scored.begin(), scored.end());
  std::vector<std::string> out;
  for (size_t i = 0; i < scored.size() && i < count; ++i) out.push_back(scored[i].second);
  return out;
}

fs::path staging_path(const fs::path& out) {
  return out.parent_path() / (out.filename().string() + ".partial-" + std::to_string(::getpid()));
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) value /= 1024, ++unit;
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return text;
}

}  // namespace peft_cli
