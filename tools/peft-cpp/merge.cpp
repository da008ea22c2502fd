// peft-cpp merge: W += scale * dW for one or more adapters, one base shard at a time.

#include <fstream>
#include <set>

#include <peft/offline_merge.h>
#include <peft/safetensors.h>

#include "commands.h"
#include "files.h"
#include "progress.h"

namespace peft_cli {
namespace {

struct PlannedAdapter {
  AdapterFiles files;
  double scale = 1.0;
  std::map<std::string, std::string> shard_of_module;  // adapted module -> shard holding its weight
  std::map<std::string, std::string> shard_of_replacement;  // replaced base key -> shard
};

std::string module_of_key(const std::string& key, const std::vector<std::string>& modules) {
  // The longest adapted module that prefixes the (prefix-stripped) key.
  static const std::string save_prefix = "base_model.model.";
  const std::string k = key.compare(0, save_prefix.size(), save_prefix) == 0 ? key.substr(save_prefix.size()) : key;
  std::string best;
  for (const auto& m : modules) {
    if (k.size() > m.size() && k.compare(0, m.size(), m) == 0 && k[m.size()] == '.' && m.size() > best.size()) best = m;
  }
  return best;
}

PlannedAdapter plan(const fs::path& dir, double scale, const BaseCheckpoint& base) {
  PlannedAdapter p;
  p.files = open_adapter(dir, /*require_config=*/true);
  p.scale = scale;
  if (p.files.config->peft_type() == "XLORA") {
    throw UserError("adapter " + dir.string() + ": XLORA adapters cannot be merged into weights (Python PEFT cannot "
                    "either): X-LoRA mixes its LoRA experts per token. Merge one of its experts instead.");
  }
  std::vector<std::string> base_keys;
  for (const auto& [key, shard] : base.shard_of) base_keys.push_back(key);
  const std::vector<std::string> modules = peft::adapted_module_names(*p.files.config, p.files.weights);
  if (modules.empty() && peft::replaced_base_tensors(*p.files.config, p.files.weights).is_empty() &&
      !p.files.weights.is_empty()) {
    // Only tensors the layers share (UniLoRA's theta_d without save_indices): the layers' parts come from the model.
    throw UserError("adapter " + dir.string() + " names no layer: its checkpoint holds only tensors its layers share "
                    "(e.g. '" + p.files.weights.keys().front() + "'), so it can only be merged on the model itself");
  }
  std::vector<std::string> missing;
  for (const auto& module : modules) {
    // A MultiheadAttention's adapters change its in_proj_weight and (Python's "<attention>.base_layer.out_proj")
    // its out_proj.weight.
    static const std::string out_proj = ".base_layer.out_proj";
    const bool attention_out_proj =
        module.size() > out_proj.size() && module.compare(module.size() - out_proj.size(), out_proj.size(), out_proj) == 0;
    const std::string weight_key =
        attention_out_proj ? module.substr(0, module.size() - out_proj.size()) + ".out_proj.weight"
        : base.shard_of.count(module + ".in_proj_weight") ? module + ".in_proj_weight"
                                                          : module + ".weight";
    auto it = base.shard_of.find(weight_key);
    if (it == base.shard_of.end()) {
      missing.push_back(weight_key);
      continue;
    }
    p.shard_of_module[module] = it->second;
  }
  for (const auto& item : peft::replaced_base_tensors(*p.files.config, p.files.weights)) {
    auto it = base.shard_of.find(item.key());
    if (it == base.shard_of.end()) {
      missing.push_back(item.key());
      continue;
    }
    p.shard_of_replacement[item.key()] = it->second;
  }
  if (!missing.empty()) {
    std::string message = "adapter " + dir.string() + " does not fit the base checkpoint: " +
                          std::to_string(missing.size()) + " tensor(s) it changes are not in the base, e.g. '" +
                          missing.front() + "' (closest base names: ";
    const auto close = closest_names(missing.front(), base_keys);
    for (size_t i = 0; i < close.size(); ++i) message += (i ? ", '" : "'") + close[i] + "'";
    throw UserError(message + ")");
  }
  return p;
}

// The adapter's tensors for the modules and replacements that live in `shard`.
peft::StateDict adapter_part(const PlannedAdapter& p, const std::string& shard) {
  std::vector<std::string> modules;
  for (const auto& [module, s] : p.shard_of_module) {
    if (s == shard) modules.push_back(module);
  }
  peft::StateDict part;
  const peft::StateDict replacements = peft::replaced_base_tensors(*p.files.config, p.files.weights);
  static const std::string save_prefix = "base_model.model.";
  for (const auto& item : p.files.weights) {
    if (!module_of_key(item.key(), modules).empty()) part.insert(item.key(), item.value());
  }
  // Model-level tensors the layers share ("base_model.vera_A", "base_model.vblora_vector_bank") go with every
  // shard that holds one of the layers.
  if (!part.is_empty()) {
    static const std::string shared_prefix = "base_model.";
    for (const auto& item : p.files.weights) {
      const std::string& key = item.key();
      if (key.compare(0, shared_prefix.size(), shared_prefix) == 0 && key.compare(0, save_prefix.size(), save_prefix) != 0) {
        part.insert(key, item.value());
      }
    }
  }
  for (const auto& item : replacements) {
    auto it = p.shard_of_replacement.find(item.key());
    if (it != p.shard_of_replacement.end() && it->second == shard && !part.contains(save_prefix + item.key())) {
      part.insert(save_prefix + item.key(), item.value());
    }
  }
  return part;
}

uint64_t tensor_bytes(const at::Tensor& t) { return static_cast<uint64_t>(t.numel()) * t.element_size(); }

}  // namespace

void merge(const MergeOptions& options, std::ostream& out) {
  if (options.adapters.empty()) throw UserError("merge needs at least one --adapter");
  if (options.scales.size() > options.adapters.size()) {
    throw UserError("more --scale values (" + std::to_string(options.scales.size()) + ") than --adapter values (" +
                    std::to_string(options.adapters.size()) + ")");
  }
  if (fs::exists(options.out)) throw UserError(options.out.string() + " already exists; choose a new --out");
  if (is_torchscript_base(options.base)) {
    merge_torchscript(options, out);
    return;
  }
  const std::optional<c10::ScalarType> dtype =
      options.dtype ? std::optional<c10::ScalarType>(parse_dtype(*options.dtype)) : std::nullopt;
  const BaseCheckpoint base = open_base(options.base);
  std::vector<PlannedAdapter> adapters;
  for (size_t i = 0; i < options.adapters.size(); ++i) {
    adapters.push_back(plan(options.adapters[i], i < options.scales.size() ? options.scales[i] : 1.0, base));
  }

  // Everything is written under a staging name and renamed at the end: an interrupted merge leaves no OUT.
  const fs::path staging = staging_path(options.out);
  if (!base.single_file) fs::create_directories(staging);
  try {
    Progress progress("merging", base.total_bytes());
    uint64_t total_size = 0;
    size_t merged_tensors = 0;
    for (const std::string& shard : base.shards) {
      const fs::path shard_path = base.dir / shard;
      peft::StateDict tensors = peft::safetensors::load_file(shard_path.string());
      const peft::safetensors::Metadata metadata = peft::safetensors::load_metadata(shard_path.string());
      for (const PlannedAdapter& p : adapters) {
        const peft::StateDict part = adapter_part(p, shard);
        if (part.is_empty()) continue;
        // A bias living in another shard cannot be rewritten here.
        peft::StateDict view = tensors;
        for (const auto& [module, s] : p.shard_of_module) {
          if (s != shard) continue;
          auto bias = base.shard_of.find(module + ".bias");
          if (bias != base.shard_of.end() && bias->second != shard) {
            view.insert(module + ".bias", peft::safetensors::load_file((base.dir / bias->second).string())[module + ".bias"]);
          }
        }
        const peft::OfflineMergeResult result = peft::merge_into_weights(*p.files.config, part, view, {p.scale, /*in_place=*/true});
        for (const auto& item : result.tensors) {
          if (!tensors.contains(item.key())) {
            throw UserError("merging " + p.files.dir.string() + " changes '" + item.key() +
                            "', which is stored in another shard than its weight; peft-cpp cannot rewrite it there");
          }
          tensors[item.key()] = item.value();
          ++merged_tensors;
        }
      }
      if (dtype) {
        for (auto& item : tensors) {
          if (item.value().is_floating_point()) item.value() = item.value().to(*dtype);
        }
      }
      for (const auto& item : tensors) total_size += tensor_bytes(item.value());
      const fs::path target = base.single_file ? staging : staging / shard;
      peft::safetensors::save_file(tensors, target.string(), metadata);
      progress.advance(fs::file_size(shard_path));
    }
    progress.finish();
    if (base.index) {
      nlohmann::json index = *base.index;
      index["metadata"]["total_size"] = total_size;
      std::ofstream file(staging / base.index_name);
      file << index.dump(2) << "\n";
      if (!file) throw UserError("cannot write " + (staging / base.index_name).string());
    }
    if (!base.single_file) {
      // The base directory's other files (config.json, tokenizer, ...) come along unchanged.
      std::set<std::string> written(base.shards.begin(), base.shards.end());
      written.insert(base.index_name);
      for (const auto& entry : fs::directory_iterator(base.dir)) {
        const std::string name = entry.path().filename().string();
        if (entry.is_regular_file() && !written.count(name) && entry.path().extension() != ".safetensors") {
          fs::copy_file(entry.path(), staging / name);
        }
      }
    }
    fs::rename(staging, options.out);
    out << "merged " << adapters.size() << " adapter(s) into " << merged_tensors << " tensor(s); wrote "
        << options.out.string() << " (" << base.shards.size() << " shard(s), " << human_bytes(total_size) << ")\n";
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    throw;
  }
}

}  // namespace peft_cli
