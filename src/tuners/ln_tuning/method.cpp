// LN tuning's registration: Python PEFT's LNTuningConfig (no fields of its own); it adapts any layer
// peft-cpp routes, by keeping a trainable copy of it.

#include "tuners/ln_tuning/layer.h"

namespace peft::detail::ln_tuning {
namespace {

class LNTuning final : public MethodOf<LNTuningConfig> {
 public:
  LNTuning() : MethodOf("ln_tuning_") {
    layers(routed_layer_kinds());
    without_common_fields({"layers_to_transform", "layers_pattern"});
  }

  std::unique_ptr<AdapterBuilder> start(LNTuningConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::ln_tuning

PEFT_REGISTER_METHOD(ln_tuning, peft::detail::ln_tuning::LNTuning)
