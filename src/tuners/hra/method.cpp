// HRA's registration: Python PEFT's HRAConfig fields and the layers it adapts.

#include "tuners/hra/layer.h"

namespace peft::detail::hra {
namespace {

class Hra final : public MethodOf<HRAConfig> {
 public:
  Hra() : MethodOf("hra_") {
    layers({LayerKind::Linear, LayerKind::Conv2d});
    field(PEFT_FIELD(r)).check(positive());
    field(PEFT_FIELD(apply_GS));
    field(PEFT_FIELD(init_weights));
    field(PEFT_FIELD(bias)).check(bias_choice("hra_only"));
    rank_keys({{"hra_u", 1}});
    rank_fields({"r", "", "", ""});
  }

  std::unique_ptr<AdapterBuilder> start(HRAConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::hra

PEFT_REGISTER_METHOD(hra, peft::detail::hra::Hra)
