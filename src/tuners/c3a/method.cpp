// C3A's registration: Python PEFT's C3AConfig fields and the layers it adapts.

#include "tuners/c3a/layer.h"

namespace peft::detail::c3a {
namespace {

class C3A final : public MethodOf<C3AConfig> {
 public:
  C3A() : MethodOf("c3a_") {
    field(PEFT_FIELD(block_size)).check(positive());
    field(PEFT_FIELD(block_size_pattern)).check(positive_values());
    field(PEFT_FIELD(init_weights)).check(init_choice({"gaussian", "kaiming_uniform", "xavier_uniform"}));
    field(PEFT_FIELD(bias)).check(bias_choice("c3a_only"));
    without_common_fields({"exclude_modules"});
  }

  std::unique_ptr<AdapterBuilder> start(C3AConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::c3a

PEFT_REGISTER_METHOD(c3a, peft::detail::c3a::C3A)
