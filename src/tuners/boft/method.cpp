// BOFT's registration: Python PEFT's BOFTConfig fields and the layers it adapts.

#include <peft/error.h>

#include "tuners/boft/layer.h"

namespace peft::detail::boft {
namespace {

class Boft final : public MethodOf<BOFTConfig> {
 public:
  Boft() : MethodOf("boft_") {
    layers({LayerKind::Linear, LayerKind::Conv2d});
    field(PEFT_FIELD(boft_block_size)).check(not_negative());
    field(PEFT_FIELD(boft_block_num)).check(not_negative());
    field(PEFT_FIELD(boft_n_butterfly_factor)).check(positive());
    field(PEFT_FIELD(boft_dropout)).check(probability());
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(init_weights));
    field(PEFT_FIELD(bias)).check(bias_choice("boft_only"));
  }

  std::unique_ptr<AdapterBuilder> start(BOFTConfig& config) const override { return make_builder(*this, config); }

 protected:
  void check(const BOFTConfig& c) const override {
    if (c.boft_block_size() == 0 && c.boft_block_num() == 0) {
      throw ConfigError("Either `boft_block_size` or `boft_block_num` must be non-zero. Currently, boft_block_size = 0 "
                        "and boft_block_num = 0.");
    }
    if (c.boft_block_size() != 0 && c.boft_block_num() != 0) {
      throw ConfigError("You can only specify either boft_block_size (" + std::to_string(c.boft_block_size()) +
                        ") or boft_block_num (" + std::to_string(c.boft_block_num()) +
                        "), but not both simultaneously, because boft_block_size x boft_block_num == in_features.");
    }
  }
};

}  // namespace
}  // namespace peft::detail::boft

PEFT_REGISTER_METHOD(boft, peft::detail::boft::Boft)
