// GraLoRA's registration: Python PEFT's GraloraConfig fields and checks, and the layers it adapts.

#include <peft/error.h>

#include "tuners/gralora/layer.h"

namespace peft::detail::gralora {
namespace {

class Gralora final : public MethodOf<GraloraConfig> {
 public:
  Gralora() : MethodOf("gralora_") {
    layers({LayerKind::Linear, LayerKind::LinearLike});  // Python: torch.nn.Linear and transformers' Conv1D
    // gralora_k first: Python checks it before anything else.
    field(PEFT_FIELD(gralora_k)).check(positive());
    field(PEFT_FIELD(r)).check(positive());
    field(PEFT_FIELD(hybrid_r)).check([](const std::string&, const int64_t& value) {
      if (value < 0) {
        throw ConfigError("`hybrid_r` should be a non-negative integer value but the value passed is " +
                          std::to_string(value));
      }
    });
    field(PEFT_FIELD(alpha)).python_int();
    // Python's nn.Dropout refuses other values when the layer is created.
    field(PEFT_FIELD(gralora_dropout)).check(probability());
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(bias)).check(bias_choice("gralora_only"));
    field(PEFT_FIELD(init_weights));
    without_common_fields({"exclude_modules"});
    rank_keys({{"gralora_A", 2}, {"gralora_B", 1}});
    rank_fields({"r", "", "alpha", ""});
  }

  std::unique_ptr<AdapterBuilder> start(GraloraConfig& config) const override { return make_builder(*this, config); }

 protected:
  void check(const GraloraConfig& config) const override {
    if (config.r() % config.gralora_k() != 0) {
      throw ConfigError("r should be divisible by gralora_k, but got " + std::to_string(config.r()) + " and " +
                        std::to_string(config.gralora_k()));
    }
  }
};

}  // namespace
}  // namespace peft::detail::gralora

PEFT_REGISTER_METHOD(gralora, peft::detail::gralora::Gralora)
