// DeLoRA's registration: Python PEFT's DeloraConfig fields and the layers it adapts.

#include <peft/error.h>

#include "tuners/delora/layer.h"

namespace peft::detail::delora {
namespace {

class Delora final : public MethodOf<DeloraConfig> {
 public:
  Delora() : MethodOf("delora_") {
    layers({LayerKind::Linear});  // Python: torch.nn.Linear only
    field(PEFT_FIELD(r)).check([](const std::string&, const int64_t& r) {
      if (r <= 0) throw ConfigError("`r` must be a positive integer; got " + std::to_string(r) + ".");
    });
    field(PEFT_FIELD(delora_lambda)).python_int();
    // Python's nn.Dropout refuses other values when the layer is created.
    field(PEFT_FIELD(module_dropout)).check(probability());
    field(PEFT_FIELD(bias)).check(bias_choice("delora_only"));
    field(PEFT_FIELD(init_weights));
    field(PEFT_FIELD(rank_pattern)).check(positive_values());
    field(PEFT_FIELD(lambda_pattern));
    rank_keys({{"delora_A", 0}, {"delora_B", 1}});
    rank_fields({"r", "rank_pattern", "", ""});
  }

  std::unique_ptr<AdapterBuilder> start(DeloraConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::delora

PEFT_REGISTER_METHOD(delora, peft::detail::delora::Delora)
