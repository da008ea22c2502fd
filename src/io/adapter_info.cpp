#include <peft/adapter_info.h>

#include <set>

#include "core/checkpoint_keys.h"
#include "core/matching.h"
#include "core/method.h"

namespace peft {

std::vector<std::string> adapted_module_names(const PeftConfig& config, const StateDict& adapter) {
  const detail::Method& method = detail::require_method(config.peft_type());
  const std::string& prefix = method.prefix();
  std::set<std::string> names;
  for (const auto& item : adapter) {
    if (method.shared_container_of_key(item.key())) continue;  // model-level, no module's
    const std::string module = detail::module_of_key(detail::strip_save_prefix(item.key()), prefix);
    if (!module.empty()) names.insert(module);
  }
  return {names.begin(), names.end()};
}

namespace {

const std::string kTokenDelta = ".token_adapter.trainable_tokens_delta";

// "<layer>" of a trainable-tokens key of an adapter whose method carries them along (not TRAINABLE_TOKENS itself,
// whose keys are its own), or "".
std::string token_layer_of(const detail::Method& method, const PeftConfig& config, const std::string& key) {
  if (config.peft_type() == "TRAINABLE_TOKENS" || !method.uses_trainable_tokens(config)) return {};
  if (key.size() <= kTokenDelta.size() || key.compare(key.size() - kTokenDelta.size(), kTokenDelta.size(), kTokenDelta) != 0) {
    return {};
  }
  return key.substr(0, key.size() - kTokenDelta.size());
}

}  // namespace

std::vector<std::pair<std::string, int64_t>> trainable_token_layers(const PeftConfig& config, const StateDict& adapter) {
  const detail::Method& method = detail::require_method(config.peft_type());
  std::set<std::pair<std::string, int64_t>> out;
  for (const auto& item : adapter) {
    const std::string layer = token_layer_of(method, config, detail::strip_save_prefix(item.key()));
    if (!layer.empty()) out.emplace(layer, item.value().dim() > 0 ? item.value().size(0) : 0);
  }
  return {out.begin(), out.end()};
}

StateDict replaced_base_tensors(const PeftConfig& config, const StateDict& adapter) {
  const detail::Method& method = detail::require_method(config.peft_type());
  const std::string& prefix = method.prefix();
  StateDict out;
  for (const auto& item : adapter) {
    if (method.shared_container_of_key(item.key())) continue;  // an adapter tensor, not a base one
    std::string key = detail::strip_save_prefix(item.key());
    if (!token_layer_of(method, config, key).empty()) continue;  // trainable tokens: rows, not a whole tensor
    if (!detail::module_of_key(key, prefix).empty()) continue;
    const std::string wrapped = ".base_layer.";
    const auto pos = key.find(wrapped);
    if (pos != std::string::npos) key = key.substr(0, pos) + "." + key.substr(pos + wrapped.size());
    if (out.contains(key)) {
      out[key] = item.value();
    } else {
      out.insert(key, item.value());
    }
  }
  return out;
}

namespace {

template <class T>
std::optional<T> number_field(const detail::Method& method, const PeftConfig& config, const std::string& name) {
  const detail::ConfigField* field = name.empty() ? nullptr : method.field(name);
  if (!field) return std::nullopt;
  const nlohmann::json value = field->value(config);
  if (!value.is_number()) return std::nullopt;
  return value.template get<T>();
}

template <class T>
PatternMap<T> pattern_field(const detail::Method& method, const PeftConfig& config, const std::string& name) {
  PatternMap<T> out;
  const detail::ConfigField* field = name.empty() ? nullptr : method.field(name);
  if (!field) return out;
  const nlohmann::json value = field->value(config);
  if (!value.is_object()) return out;
  for (const auto& [key, v] : value.items()) {
    if (v.is_number()) out.emplace_back(key, v.template get<T>());
  }
  return out;
}

}  // namespace

std::vector<AdaptedModuleInfo> describe_adapted_modules(const PeftConfig& config, const StateDict& adapter) {
  const detail::Method& method = detail::require_method(config.peft_type());
  const auto& fields = method.rank_fields();
  const std::optional<int64_t> rank = number_field<int64_t>(method, config, fields.rank);
  const std::optional<double> alpha = number_field<double>(method, config, fields.alpha);
  const detail::PatternLookup<int64_t> ranks(pattern_field<int64_t>(method, config, fields.rank_pattern), "rank_pattern");
  const detail::PatternLookup<double> alphas(pattern_field<double>(method, config, fields.alpha_pattern), "alpha_pattern");

  std::vector<AdaptedModuleInfo> out;
  for (const std::string& module : adapted_module_names(config, adapter)) {
    AdaptedModuleInfo info;
    info.name = module;
    if (rank) info.config_rank = ranks.lookup(module, *rank);
    if (alpha) info.alpha = alphas.lookup(module, *alpha);
    std::string rank_key;
    for (const auto& [key, dim] : method.rank_keys()) {
      const at::Tensor* t = adapter.find(detail::kSavePrefix + module + "." + key);
      if (!t) t = adapter.find(module + "." + key);
      if (!t || t->dim() <= dim) continue;
      const int64_t found = t->size(dim);
      if (!info.rank) {
        info.rank = found;
        rank_key = key;
      } else if (*info.rank != found) {
        info.problems.push_back(rank_key + " has rank " + std::to_string(*info.rank) + " but " + key + " has " +
                                std::to_string(found));
      }
    }
    // A parameter target's factors hold r rows per expert (Python's ParamWrapper): their rank is not the config's.
    if (info.rank && info.config_rank && *info.rank != *info.config_rank && !method.targets_parameters(config)) {
      info.problems.push_back("rank " + std::to_string(*info.rank) + " in the file, but the config gives " +
                              std::to_string(*info.config_rank) + " (" + fields.rank +
                              (fields.rank_pattern.empty() ? "" : " / " + fields.rank_pattern) + ")");
    }
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace peft
