// GLoRA's registration: Python PEFT's GloraConfig fields and the layers it adapts.

#include <algorithm>
#include <vector>

#include <peft/error.h>

#include "tuners/glora/layer.h"

namespace peft::detail::glora {
namespace {

/// Python's check of one parameterisation: the valid values listed sorted.
std::function<void(const std::string&, const std::string&)> one_of(std::vector<std::string> valid) {
  std::sort(valid.begin(), valid.end());
  return [valid](const std::string& field, const std::string& value) {
    if (std::find(valid.begin(), valid.end(), value) != valid.end()) return;
    std::string list;
    for (const auto& v : valid) list += (list.empty() ? "" : ", ") + v;
    throw ConfigError("Invalid " + field + " value: '" + value + "'. Valid values are: " + list + ".");
  };
}

class Glora final : public MethodOf<GloraConfig> {
 public:
  Glora() : MethodOf("glora_") {
    layers({LayerKind::Linear});
    field(PEFT_FIELD(r));
    field(PEFT_FIELD(bias)).check(bias_choice("glora_only"));
    field(PEFT_FIELD(config_A_B)).check(one_of({"lora", "vector", "constant", "none"}));
    field(PEFT_FIELD(config_C)).check(one_of({"lora", "vector", "none"}));
    field(PEFT_FIELD(config_D_E)).check(one_of({"vector", "constant", "none"}));
    field(PEFT_FIELD(init_weights));
    without_common_fields({"exclude_modules", "layers_to_transform", "layers_pattern"});
    rank_keys({{"glora_A.Xu", 0}, {"glora_C.Xu", 0}});
    rank_fields({"r", "", "", ""});
  }

  std::unique_ptr<AdapterBuilder> start(GloraConfig& config) const override { return make_builder(*this, config); }

 protected:
  void check(const GloraConfig& c) const override {
    // Python has no check of r; its "lora" paths cannot be made without a positive one.
    if ((c.config_A_B() == "lora" || c.config_C() == "lora") && c.r() <= 0) {
      throw ConfigError("`r` should be a positive integer value but the value passed is " + std::to_string(c.r()));
    }
  }
};

}  // namespace
}  // namespace peft::detail::glora

PEFT_REGISTER_METHOD(glora, peft::detail::glora::Glora)
