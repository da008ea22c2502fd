// (IA)^3's registration: Python PEFT's IA3Config fields and the layers it adapts.

#include <algorithm>

#include <peft/error.h>

#include "tuners/ia3/layer.h"

namespace peft::detail::ia3 {
namespace {

class IA3 final : public MethodOf<IA3Config> {
 public:
  IA3() : MethodOf("ia3_") {
    layers({LayerKind::Linear, LayerKind::Conv2d, LayerKind::Conv3d, LayerKind::LinearLike});
    field(PEFT_FIELD(feedforward_modules));
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(init_ia3_weights));
    without_common_fields({"layers_to_transform", "layers_pattern"});
  }

  std::unique_ptr<AdapterBuilder> start(IA3Config& config) const override { return make_builder(*this, config); }

 protected:
  void check(const IA3Config& c) const override {
    if (!c.feedforward_modules().is_names() || !c.target_modules().is_names()) return;
    const auto& targets = c.target_modules().names();
    for (const auto& name : c.feedforward_modules().names()) {
      if (std::find(targets.begin(), targets.end(), name) == targets.end()) {
        throw ConfigError("`feedforward_modules` should be a subset of `target_modules`");
      }
    }
  }
};

}  // namespace
}  // namespace peft::detail::ia3

PEFT_REGISTER_METHOD(ia3, peft::detail::ia3::IA3)
