#include <peft/tuners/lora/save_as_lora.h>

#include <cmath>
#include <filesystem>

#include <ATen/ops/cat.h>
#include <c10/util/Exception.h>

#include <peft/error.h>
#include <peft/lifecycle.h>
#include <peft/safetensors.h>
#include <peft/tuners/lora/config.h>

#include "core/config_fields.h"
#include "io/atomic_file.h"

namespace peft {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPrefix = "base_model.model.";

std::string without_prefix(const std::string& key) {
  return key.compare(0, std::string(kPrefix).size(), kPrefix) == 0 ? key.substr(std::string(kPrefix).size()) : key;
}

bool contains(const std::string& text, const char* part) { return text.find(part) != std::string::npos; }

}  // namespace

StateDict subtract_mutated_init(const StateDict& trained, const StateDict& initial) {
  StateDict by_key;  // initial, keyed without the prefix
  for (const auto& item : initial) by_key.insert(without_prefix(item.key()), item.value());
  StateDict converted;
  for (const auto& item : trained) {
    const bool is_a = contains(item.key(), "lora_A"), is_b = contains(item.key(), "lora_B");
    if (!is_a && !is_b) continue;
    const at::Tensor* start = by_key.find(without_prefix(item.key()));
    if (!start) {
      throw StateDictError("subtract_mutated_init: the initial adapter has no tensor '" + without_prefix(item.key()) +
                           "' for the trained adapter's '" + item.key() + "'");
    }
    const at::Tensor& now = item.value();
    // Python would stack tensors of other ranks too and write an adapter whose config (2r) does not fit them.
    if (now.sizes() != start->sizes()) {
      throw StateDictError("subtract_mutated_init: '" + item.key() + "' has shape " + c10::str(now.sizes()) +
                           " but the initial adapter's has " + c10::str(start->sizes()) +
                           "; the initial adapter must be this adapter as it was right after injection");
    }
    const at::Tensor initial_part = start->to(now.options());
    converted.insert(item.key(), is_a ? at::cat({now, initial_part}, 0) : at::cat({now, initial_part.neg()}, 1));
  }
  return converted;
}

void save_adapter_as_lora(ConstModuleRef model, const std::string& directory, const std::string& initial_directory,
                          const std::string& adapter_name) {
  const auto config = std::dynamic_pointer_cast<const LoraConfig>(adapter_config(model, adapter_name));
  if (!config) {
    throw ConfigError("save_adapter_as_lora: adapter '" + adapter_name + "' is not a LoRA adapter (peft-cpp converts "
                      "PiSSA / OLoRA / CorDA-initialised LoRA adapters only)");
  }
  if (config->use_rslora() && (!config->rank_pattern().empty() || !config->alpha_pattern().empty())) {
    throw ConfigError(
        "Passing `path_initial_model_for_weight_conversion` to `save_pretrained` is not supported when using "
        "`rank_pattern` or `alpha_pattern` at the same time as `use_rslora=True`.");
  }
  const InitLoraWeights& init = config->init_lora_weights();
  const bool converts = init.is_bool() ? init.enabled()
                                       : init.method().rfind("pissa", 0) == 0 || init.method().rfind("corda", 0) == 0 ||
                                             init.method().rfind("olora", 0) == 0;
  if (!converts) {
    TORCH_WARN("`path_initial_model_for_weight_conversion` only works for converting a PiSSA/CorDA/OLoRA adapter to "
               "a LoRA adapter");
  }

  // Read and compute everything first.
  const fs::path initial_weights = fs::path(initial_directory) / "adapter_model.safetensors";
  if (!fs::is_regular_file(initial_weights)) {
    throw FileFormatError("save_adapter_as_lora: " + initial_weights.string() + " does not exist (save the adapter "
                          "right after injection there first, with init_lora_weights set to true)");
  }
  const StateDict converted = subtract_mutated_init(get_peft_model_state_dict(model, adapter_name),
                                                    safetensors::load_file(initial_weights.string()));
  StateDict prefixed;
  for (const auto& item : converted) prefixed.insert(kPrefix + without_prefix(item.key()), item.value().contiguous());

  // The initial directory's config: the adapter's, init_lora_weights true (Python writes it before loading it back).
  LoraConfig initial_config = *config;
  initial_config.init_lora_weights(true);
  LoraConfig lora = initial_config;
  detail::ConfigFields::set_inference_mode(lora, true);
  lora.r(config->r() * 2);
  lora.lora_alpha(config->use_rslora() ? config->lora_alpha() * std::sqrt(2.0) : config->lora_alpha() * 2);
  PatternMap<int64_t> ranks;
  for (const auto& [key, value] : config->rank_pattern()) ranks.emplace_back(key, value * 2);
  lora.rank_pattern(ranks);
  PatternMap<double> alphas;
  for (const auto& [key, value] : config->alpha_pattern()) alphas.emplace_back(key, value * 2);
  lora.alpha_pattern(alphas);

  const std::string weights = safetensors::save_bytes(prefixed, {{"format", "pt"}});
  const fs::path out = adapter_name == "default" ? fs::path(directory) : fs::path(directory) / adapter_name;
  if (fs::exists(out) && !fs::is_directory(out)) {
    throw FileFormatError("Provided path (" + out.string() + ") should be a directory, not a file");
  }
  fs::create_directories(out);
  detail::write_file_atomically((fs::path(initial_directory) / "adapter_config.json").string(),
                                initial_config.to_json_string());
  detail::write_file_atomically((out / "adapter_model.safetensors").string(), weights);
  detail::write_file_atomically((out / "adapter_config.json").string(), lora.to_json_string());
}

}  // namespace peft
