// peft-cpp inspect: what an adapter checkpoint holds.

#include <limits>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include <peft/offline_merge.h>

#include "commands.h"
#include "core/matching.h"
#include "files.h"

namespace peft_cli {
namespace {

const std::string kSavePrefix = "base_model.model.";

/// "model.layers.0.mlp", "model.layers.1.mlp", ... -> "model.layers.{0-1}.mlp" (the first numeric component).
std::vector<std::string> compress(const std::vector<std::string>& names) {
  std::map<std::string, std::vector<int64_t>> groups;
  std::vector<std::string> order, plain;
  for (const auto& name : names) {
    size_t start = 0;
    bool grouped = false;
    while (start <= name.size()) {
      size_t end = name.find('.', start);
      if (end == std::string::npos) end = name.size();
      const std::string part = name.substr(start, end - start);
      if (!part.empty() && part.size() < 10 && part.find_first_not_of("0123456789") == std::string::npos) {
        const std::string key = name.substr(0, start) + "{}" + name.substr(end);
        if (!groups.count(key)) order.push_back(key);
        groups[key].push_back(std::stoll(part));
        grouped = true;
        break;
      }
      start = end + 1;
    }
    if (!grouped) plain.push_back(name);
  }
  std::vector<std::string> out(plain.begin(), plain.end());
  for (const auto& key : order) {
    std::vector<int64_t> numbers = groups[key];
    std::sort(numbers.begin(), numbers.end());
    std::string list;
    if (numbers.size() == 1) {
      list = std::to_string(numbers[0]);
    } else if (numbers.back() - numbers.front() + 1 == static_cast<int64_t>(numbers.size())) {
      list = "{" + std::to_string(numbers.front()) + "-" + std::to_string(numbers.back()) + "}";
    } else {
      for (size_t i = 0; i < numbers.size(); ++i) list += (i ? "," : "{") + std::to_string(numbers[i]);
      list += "}";
    }
    const size_t at = key.find("{}");
    out.push_back(key.substr(0, at) + list + key.substr(at + 2));
  }
  return out;
}

std::string strip(const std::string& key) {
  return key.compare(0, kSavePrefix.size(), kSavePrefix) == 0 ? key.substr(kSavePrefix.size()) : key;
}

// The rank a module's tensors show, for the low-rank methods; -1 when the method has no single rank.
int64_t rank_of(const std::string& type, const std::string& module, const peft::StateDict& weights) {
  auto find = [&](const std::string& rest) -> const at::Tensor* {
    for (const auto& prefix : {kSavePrefix, std::string()}) {
      if (const at::Tensor* t = weights.find(prefix + module + "." + rest)) return t;
    }
    return nullptr;
  };
  if (type == "LORA") {
    if (const at::Tensor* a = find("lora_A.weight")) return a->size(0);
    if (const at::Tensor* a = find("lora_embedding_A")) return a->size(0);
  } else if (type == "ADALORA") {
    if (const at::Tensor* e = find("lora_E")) return e->size(0);
  } else if (type == "LOHA") {
    if (const at::Tensor* b = find("hada_w1_b")) return b->size(0);
  }
  return -1;
}

}  // namespace

void inspect(const InspectOptions& options, std::ostream& out) {
  const AdapterFiles adapter = open_adapter(options.adapter, /*require_config=*/false);
  nlohmann::json report;
  std::vector<std::string> warnings;
  report["weights_file"] = adapter.weights_file.string();
  report["file_bytes"] = fs::file_size(adapter.weights_file);

  int64_t parameters = 0;
  std::set<std::string> dtypes;
  bool prefixed = true;
  for (const auto& item : adapter.weights) {
    parameters += item.value().numel();
    dtypes.insert(dtype_name(item.value().scalar_type()));
    if (item.key().compare(0, kSavePrefix.size(), kSavePrefix) != 0) prefixed = false;
  }
  report["tensors"] = adapter.weights.size();
  report["parameters"] = parameters;
  report["dtypes"] = std::vector<std::string>(dtypes.begin(), dtypes.end());
  if (!prefixed) {
    warnings.push_back("keys lack save_pretrained's 'base_model.model.' prefix (an inject-style state dict); "
                       "`peft-cpp convert` rewrites it in the Python layout");
  }

  if (!adapter.config) {
    warnings.push_back("no adapter_config.json beside the weights: the method and its settings are unknown");
    report["method"] = nullptr;
  } else {
    const peft::PeftConfig& config = *adapter.config;
    const nlohmann::json fields = nlohmann::json::parse(config.to_json_string());
    const std::string type = config.peft_type();
    report["method"] = type;
    report["peft_version"] = config.peft_version() ? nlohmann::json(*config.peft_version()) : nlohmann::json(nullptr);
    report["base_model_name_or_path"] = fields.value("base_model_name_or_path", nlohmann::json(nullptr));
    const std::vector<std::string> modules = peft::adapted_module_names(config, adapter.weights);
    report["module_count"] = modules.size();
    report["modules"] = compress(modules);

    // Rank and alpha per module (rank_pattern / alpha_pattern resolved), grouped.
    const char* alpha_field = fields.contains("lora_alpha") ? "lora_alpha" : fields.contains("alpha") ? "alpha" : nullptr;
    peft::PatternMap<int64_t> rank_pattern;
    peft::PatternMap<double> alpha_pattern;
    if (fields.contains("rank_pattern") && fields["rank_pattern"].is_object()) {
      for (const auto& [k, v] : fields["rank_pattern"].items()) {
        if (v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))) {
          rank_pattern.emplace_back(k, v.get<int64_t>());
        }
      }
    }
    if (fields.contains("alpha_pattern") && fields["alpha_pattern"].is_object()) {
      for (const auto& [k, v] : fields["alpha_pattern"].items()) {
        if (v.is_number()) alpha_pattern.emplace_back(k, v.get<double>());
      }
    }
    const peft::detail::PatternLookup<int64_t> ranks(rank_pattern, "rank_pattern");
    const peft::detail::PatternLookup<double> alphas(alpha_pattern, "alpha_pattern");
    std::map<std::pair<int64_t, double>, std::vector<std::string>> groups;
    const int64_t default_r = fields.value("r", int64_t{-1});
    for (const auto& module : modules) {
      const int64_t rank = rank_of(type, module, adapter.weights);
      const double alpha = alpha_field ? alphas.lookup(module, fields[alpha_field].get<double>()) : 0.0;
      groups[{rank, alpha}].push_back(module);
      if (type == "LORA" && rank >= 0 && default_r >= 0) {
        const int64_t expected = ranks.lookup(module, default_r);
        if (expected != rank) {
          warnings.push_back(module + ": rank " + std::to_string(rank) + " in the file, but the config gives " +
                             std::to_string(expected) + " (r / rank_pattern)");
        }
      }
    }
    nlohmann::json rank_groups = nlohmann::json::array();
    for (const auto& [key, names] : groups) {
      nlohmann::json g;
      g["rank"] = key.first >= 0 ? nlohmann::json(key.first) : nlohmann::json(nullptr);
      g["alpha"] = alpha_field ? nlohmann::json(key.second) : nlohmann::json(nullptr);
      g["modules"] = compress(names);
      rank_groups.push_back(g);
    }
    report["ranks"] = rank_groups;

    // Shape consistency of LoRA's factors.
    if (type == "LORA") {
      for (const auto& module : modules) {
        const at::Tensor* a = adapter.weights.find(kSavePrefix + module + ".lora_A.weight");
        const at::Tensor* b = adapter.weights.find(kSavePrefix + module + ".lora_B.weight");
        if (a && b && a->size(0) != b->size(1)) {
          warnings.push_back(module + ": lora_A has rank " + std::to_string(a->size(0)) + " but lora_B has " +
                             std::to_string(b->size(1)));
        }
      }
    }
    // Keys that are neither the method's tensors nor whole-tensor replacements (modules_to_save, biases).
    std::vector<std::string> others;
    for (const auto& item : peft::replaced_base_tensors(config, adapter.weights)) others.push_back(item.key());
    for (const auto& key : others) {
      const std::string last = key.substr(key.rfind('.') + 1);
      if (last != "weight" && last != "bias") warnings.push_back("'" + key + "' matches no known adapter key pattern");
    }
    report["replaced_base_tensors"] = compress(others);
  }
  report["warnings"] = warnings;

  if (options.json) {
    out << report.dump(2) << "\n";
    return;
  }
  out << "adapter:     " << adapter.weights_file.string() << " (" << human_bytes(report["file_bytes"]) << ")\n";
  if (!report["method"].is_null()) {
    out << "method:      " << report["method"].get<std::string>();
    if (!report["peft_version"].is_null()) out << " (written by peft " << report["peft_version"].get<std::string>() << ")";
    out << "\n";
    if (!report["base_model_name_or_path"].is_null()) {
      out << "base model:  " << report["base_model_name_or_path"].get<std::string>() << "\n";
    }
  }
  out << "tensors:     " << report["tensors"] << ", " << parameters << " parameters, dtype";
  for (const auto& d : dtypes) out << " " << d;
  out << "\n";
  if (report.contains("modules")) {
    out << "modules:     " << report["module_count"] << "\n";
    for (const auto& g : report["ranks"]) {
      out << "  ";
      if (!g["rank"].is_null()) out << "r=" << g["rank"] << " ";
      if (!g["alpha"].is_null()) out << "alpha=" << g["alpha"] << " ";
      out << ":";
      for (const auto& m : g["modules"]) out << " " << m.get<std::string>();
      out << "\n";
    }
    if (!report["replaced_base_tensors"].empty()) {
      out << "replaces:   ";
      for (const auto& m : report["replaced_base_tensors"]) out << " " << m.get<std::string>();
      out << "\n";
    }
  }
  for (const auto& w : warnings) out << "warning:     " << w << "\n";
}

}  // namespace peft_cli
