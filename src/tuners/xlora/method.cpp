// X-LoRA's registration: Python PEFT's XLoraConfig fields and checks. An X-LoRA config is read and written like any
// other, but not injected layer by layer: peft::XLoraModel loads its LoRA experts and builds the classifier.

#include <peft/error.h>
#include <peft/tuners/xlora/config.h>

#include "core/method.h"

namespace peft::detail::xlora {
namespace {

void read_adapters(JsonConfigReader& in, XLoraConfig& config) {
  const nlohmann::json* value = in.raw("adapters");
  if (!value) return;  // null: none, as Python's default (it warns when the model is made)
  if (!value->is_object()) in.fail("adapters", "must be an object mapping adapter names to adapter directories.");
  PatternMap<std::string> adapters;
  for (const auto& [name, path] : value->items()) {
    if (!path.is_string()) in.fail("adapters", "maps '" + name + "' to a non-string; expected an adapter directory.");
    adapters.emplace_back(name, path.get<std::string>());
  }
  config.adapters(std::move(adapters));
}

nlohmann::json write_adapters(const XLoraConfig& config) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [name, path] : config.adapters()) out[name] = path;
  return out;
}

class XLora final : public MethodOf<XLoraConfig> {
 public:
  XLora() : MethodOf("internal_xlora_classifier") {
    layers({});
    field(PEFT_FIELD(hidden_size)).check([](const std::string& name, const std::optional<int64_t>& value) {
      if (value && *value <= 0) throw ConfigError("`hidden_size` must be positive, got " + std::to_string(*value) + ".");
    });
    custom("adapters", read_adapters, write_adapters);
    field(PEFT_FIELD(enable_softmax));
    field(PEFT_FIELD(enable_softmax_topk));
    field(PEFT_FIELD(layerwise_scalings));
    // Python's XLoraClassifier refuses a depth below one when it is built.
    field(PEFT_FIELD(xlora_depth)).check([](const std::string&, const int64_t& value) {
      if (value <= 0) throw ConfigError("X-LoRA depth must be strictly positive.");
    });
    field(PEFT_FIELD(xlora_size)).check(positive());
    field(PEFT_FIELD(xlora_dropout_p)).check(probability());
    field(PEFT_FIELD(use_trainable_adapters));
    field(PEFT_FIELD(softmax_temperature)).check([](const std::string&, const double& value) {
      if (value == 0) throw ConfigError("`softmax_temperature` divides the classifier's logits: it must not be 0.");
    });
    // Python only warns, then keeps no expert (k = 0) or fails inside torch.topk (k < 0).
    field(PEFT_FIELD(top_k_lora)).check([](const std::string&, const std::optional<int64_t>& value) {
      if (value && *value < 1) throw ConfigError("`top_k_lora` value must be at least 1.");
    });
    field(PEFT_FIELD(scaling_pass_value));
    field(PEFT_FIELD(global_scaling_weight));
    without_common_fields(
        {"target_modules", "exclude_modules", "modules_to_save", "layers_to_transform", "layers_pattern"});
  }

  std::string injection_refusal() const override {
    return "An X-LoRA adapter (XLORA) is not injected layer by layer: it loads its LoRA experts and runs the model "
           "twice per forward (the scaling pass, then the pass with the predicted scalings), which needs the "
           "model's hidden-state pass. Make it with peft::XLoraModel(model, config, passes), or load a saved one "
           "with peft::load_xlora(model, directory, passes) (<peft/tuners/xlora/model.h>).";
  }

  void check(const XLoraConfig& config) const override {
    for (std::size_t i = 0; i < config.adapters().size(); ++i) {
      for (std::size_t j = 0; j < i; ++j) {
        if (config.adapters()[i].first == config.adapters()[j].first) {
          throw ConfigError("`adapters` names '" + config.adapters()[i].first + "' twice.");
        }
      }
    }
    if (config.top_k_lora() && !config.adapters().empty() &&
        *config.top_k_lora() > static_cast<int64_t>(config.adapters().size())) {
      throw ConfigError("`top_k_lora` (" + std::to_string(*config.top_k_lora()) + ") is larger than the number of "
                        "adapters (" + std::to_string(config.adapters().size()) + "): torch.topk cannot select them.");
    }
  }

  std::unique_ptr<AdapterBuilder> start(XLoraConfig&) const override { throw ConfigError(injection_refusal()); }
};

}  // namespace
}  // namespace peft::detail::xlora

PEFT_REGISTER_METHOD(xlora, peft::detail::xlora::XLora)
