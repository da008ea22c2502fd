// peft-cpp inspect: what an adapter checkpoint holds.

#include <limits>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include <peft/adapter_info.h>

#include "commands.h"
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
  // An X-LoRA file holds its classifier (base_model.internal_xlora_classifier.*); its LoRA experts are directories of
  // their own, named by the config.
  const bool xlora = adapter.config && adapter.config->peft_type() == "XLORA";
  if (!prefixed && !xlora) {
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
    if (xlora) {
      report["xlora_experts"] = fields.value("adapters", nlohmann::json::object());
    }
  }
  if (adapter.config && !xlora) {
    const peft::PeftConfig& config = *adapter.config;
    // Rank and alpha per module (rank_pattern / alpha_pattern resolved), grouped; what the method says.
    const std::vector<peft::AdaptedModuleInfo> modules = peft::describe_adapted_modules(config, adapter.weights);
    std::vector<std::string> names;
    std::map<std::pair<int64_t, double>, std::vector<std::string>> groups;
    bool any_alpha = false;
    for (const auto& info : modules) {
      names.push_back(info.name);
      any_alpha = any_alpha || info.alpha.has_value();
      groups[{info.rank.value_or(-1), info.alpha.value_or(0.0)}].push_back(info.name);
      for (const auto& problem : info.problems) warnings.push_back(info.name + ": " + problem);
    }
    report["module_count"] = modules.size();
    report["modules"] = compress(names);
    nlohmann::json rank_groups = nlohmann::json::array();
    for (const auto& [key, group] : groups) {
      nlohmann::json g;
      g["rank"] = key.first >= 0 ? nlohmann::json(key.first) : nlohmann::json(nullptr);
      g["alpha"] = any_alpha ? nlohmann::json(key.second) : nlohmann::json(nullptr);
      g["modules"] = compress(group);
      rank_groups.push_back(g);
    }
    report["ranks"] = rank_groups;

    // Keys that are neither the method's tensors nor whole-tensor replacements (modules_to_save, biases).
    std::vector<std::string> others;
    for (const auto& item : peft::replaced_base_tensors(config, adapter.weights)) others.push_back(item.key());
    for (const auto& key : others) {
      const std::string last = key.substr(key.rfind('.') + 1);
      if (last != "weight" && last != "bias") warnings.push_back("'" + key + "' matches no known adapter key pattern");
    }
    report["replaced_base_tensors"] = compress(others);
    nlohmann::json tokens = nlohmann::json::object();
    for (const auto& [layer, rows] : peft::trainable_token_layers(config, adapter.weights)) tokens[layer] = rows;
    report["trainable_token_layers"] = tokens;
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
  if (report.contains("xlora_experts")) {
    out << "classifier:  the X-LoRA classifier (base_model.internal_xlora_classifier.*)\n";
    out << "experts:     " << report["xlora_experts"].size() << " LoRA adapters\n";
    for (const auto& [name, path] : report["xlora_experts"].items()) out << "  " << name << ": " << path << "\n";
  }
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
    if (!report["trainable_token_layers"].empty()) {
      out << "tokens:     ";
      for (const auto& [layer, rows] : report["trainable_token_layers"].items()) out << " " << layer << " (" << rows << " rows)";
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
