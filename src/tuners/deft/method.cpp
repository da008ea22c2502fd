// DeFT's registration: Python PEFT's DeftConfig fields and the layers it adapts.

#include <peft/error.h>

#include "tuners/deft/layer.h"

namespace peft::detail::deft {
namespace {

class Deft final : public MethodOf<DeftConfig> {
 public:
  Deft() : MethodOf("deft_") {
    layers({LayerKind::Linear, LayerKind::LinearLike});  // Python: torch.nn.Linear and transformers' Conv1D
    field(PEFT_FIELD(r)).check(positive());
    field(PEFT_FIELD(decomposition_method)).check([](const std::string&, const std::string& method) {
      if (method != "qr" && method != "relu") {
        throw ConfigError("Unknown decomposition_method '" + method + "', must be one of ['qr', 'relu'].");
      }
    });
    field(PEFT_FIELD(init_scale));
    field(PEFT_FIELD(alpha));
    field(PEFT_FIELD(para));
    field(PEFT_FIELD(fan_in_fan_out));
    // Python's nn.Dropout refuses other values when the layer is created.
    field(PEFT_FIELD(deft_dropout)).check(probability());
    field(PEFT_FIELD(init_weights));
    field(PEFT_FIELD(bias)).check(bias_choice("deft_only"));
    rank_keys({{"deft_P", 1}, {"deft_R", 0}});
    rank_fields({"r", "", "alpha", ""});
  }

  std::unique_ptr<AdapterBuilder> start(DeftConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::deft

PEFT_REGISTER_METHOD(deft, peft::detail::deft::Deft)
