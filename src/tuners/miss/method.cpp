// MiSS's registration: Python PEFT's MissConfig fields and the layers it adapts.

#include "tuners/miss/layer.h"

namespace peft::detail::miss {
namespace {

class Miss final : public MethodOf<MissConfig> {
 public:
  Miss() : MethodOf("miss_") {
    field(PEFT_FIELD(r)).check(positive());
    field(PEFT_FIELD(miss_dropout)).check(probability());
    field(PEFT_FIELD(mini_r)).check(positive());
    field(PEFT_FIELD(init_weights)).check(init_choice({"bat", "mini"}));
    field(PEFT_FIELD(bias)).check(bias_choice("MiSS_only"));
  }

  std::unique_ptr<AdapterBuilder> start(MissConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::miss

PEFT_REGISTER_METHOD(miss, peft::detail::miss::Miss)
