// SHiRA's registration: Python PEFT's ShiraConfig fields and the layers it adapts.

#include <c10/util/Exception.h>

#include "tuners/shira/layer.h"

namespace peft::detail::shira {
namespace {

class Shira final : public MethodOf<ShiraConfig> {
 public:
  Shira() : MethodOf("shira_") {
    layers({LayerKind::Linear});
    field(PEFT_FIELD(r)).check(positive());
    field(PEFT_FIELD(mask_type));
    field(PEFT_FIELD(random_seed));
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(init_weights));
    // mask_fn is code, not data: Python does not save it either.
    without_common_fields({"exclude_modules", "layers_to_transform", "layers_pattern"});
  }

  std::unique_ptr<AdapterBuilder> start(ShiraConfig& config) const override {
    if (config.mask_type() != "random" && !config.mask_fn() && !config.inference_mode()) {
      // Python's __post_init__ warning; its adapters then get their indices from a checkpoint only.
      TORCH_WARN("Argument self.mask_type='", config.mask_type(), "' is not recognized, please supply your own masking "
                 "function by calling `config.mask_fn = my_mask_fn`.");
    }
    return make_builder(*this, config);
  }
};

}  // namespace
}  // namespace peft::detail::shira

PEFT_REGISTER_METHOD(shira, peft::detail::shira::Shira)
