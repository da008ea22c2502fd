// LoKr's registration: Python PEFT's LoKrConfig fields (LyCORIS's shared ones, plus its own).

#include "tuners/common/lycoris.h"
#include "tuners/lokr/layer.h"

namespace peft::detail::lokr {
namespace {

class LoKr final : public LycorisMethod<LoKrConfig> {
 public:
  LoKr() : LycorisMethod("lokr_") {
    field(PEFT_FIELD(decompose_both));
    field(PEFT_FIELD(decompose_factor));
    field(PEFT_FIELD(rank_dropout_scale));
    field(PEFT_FIELD(init_weights)).check(init_choice({"lycoris"}));
  }

  std::unique_ptr<AdapterBuilder> start(LoKrConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::lokr

PEFT_REGISTER_METHOD(lokr, peft::detail::lokr::LoKr)
