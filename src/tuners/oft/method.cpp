// OFT's registration: Python PEFT's OFTConfig fields and the layers it adapts.

#include <peft/error.h>

#include "tuners/oft/layer.h"

namespace peft::detail::oft {
namespace {

class Oft final : public MethodOf<OFTConfig> {
 public:
  Oft() : MethodOf("oft_") {
    layers({LayerKind::Linear, LayerKind::Conv2d, LayerKind::Embedding});
    field(PEFT_FIELD(r)).check(not_negative());
    field(PEFT_FIELD(oft_block_size)).check(not_negative());
    field(PEFT_FIELD(module_dropout)).check(probability());
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(init_weights));
    field(PEFT_FIELD(coft));
    field(PEFT_FIELD(eps));
    field(PEFT_FIELD(block_share));
    field(PEFT_FIELD(use_cayley_neumann));
    field(PEFT_FIELD(num_cayley_neumann_terms));
    field(PEFT_FIELD(bias)).check(bias_choice("oft_only"));
    embedding_containers({"oft_embedding_R"});
  }

  std::unique_ptr<AdapterBuilder> start(OFTConfig& config) const override { return make_builder(*this, config); }

 protected:
  void check_file(const JsonConfigReader& in) const override {
    if (!in.has("oft_block_size")) {
      in.fail("oft_block_size",
              "OFT has been updated since PEFT 0.14.0. Your trained adapter weights are incompatible with the latest "
              "version of OFT. Please retrain your adapter weights with newer PEFT versions.");
    }
  }

  void check(const OFTConfig& c) const override {
    if (c.r() == 0 && c.oft_block_size() == 0) {
      throw ConfigError("Either `r` or `oft_block_size` must be non-zero. Currently, r = 0 and oft_block_size = 0.");
    }
    if (c.r() != 0 && c.oft_block_size() != 0) {
      throw ConfigError("You can only specify either r (" + std::to_string(c.r()) + ") or oft_block_size (" +
                        std::to_string(c.oft_block_size()) +
                        "), but not both simultaneously, because r x oft_block_size == in_features.");
    }
    if (c.use_cayley_neumann()) positive()("num_cayley_neumann_terms", c.num_cayley_neumann_terms());
  }
};

}  // namespace
}  // namespace peft::detail::oft

PEFT_REGISTER_METHOD(oft, peft::detail::oft::Oft)
