// LoHa's registration: Python PEFT's LoHaConfig fields (LyCORIS's shared ones, plus its own).

#include "tuners/common/lycoris.h"
#include "tuners/loha/layer.h"

namespace peft::detail::loha {
namespace {

class LoHa final : public LycorisMethod<LoHaConfig> {
 public:
  LoHa() : LycorisMethod("hada_") {
    field(PEFT_FIELD(init_weights));
    rank_keys({{"hada_w1_b", 0}, {"hada_w2_b", 0}});
  }

  std::unique_ptr<AdapterBuilder> start(LoHaConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::loha

PEFT_REGISTER_METHOD(loha, peft::detail::loha::LoHa)
