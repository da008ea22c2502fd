// BEFT's registration: Python PEFT's BeftConfig fields and the layers it adapts.

#include "tuners/beft/layer.h"

namespace peft::detail::beft {
namespace {

class Beft final : public MethodOf<BeftConfig> {
 public:
  Beft() : MethodOf("beft_") {
    layers({LayerKind::Linear});
    field(PEFT_FIELD(init_weights));
    without_common_fields({"exclude_modules", "layers_to_transform", "layers_pattern"});
  }

  std::unique_ptr<AdapterBuilder> start(BeftConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::beft

PEFT_REGISTER_METHOD(beft, peft::detail::beft::Beft)
