// FourierFT's registration: Python PEFT's FourierFTConfig fields and the layers it adapts.

#include "tuners/fourierft/layer.h"

namespace peft::detail::fourierft {
namespace {

class FourierFT final : public MethodOf<FourierFTConfig> {
 public:
  FourierFT() : MethodOf("fourierft_") {
    layers({LayerKind::Linear, LayerKind::LinearLike});
    field(PEFT_FIELD(n_frequency)).check(positive());
    field(PEFT_FIELD(scaling));
    field(PEFT_FIELD(random_loc_seed));
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(n_frequency_pattern)).check(positive_values());
    field(PEFT_FIELD(init_weights));
    field(PEFT_FIELD(bias)).check(bias_choice("fourier_only"));
  }

  std::unique_ptr<AdapterBuilder> start(FourierFTConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::fourierft

PEFT_REGISTER_METHOD(fourierft, peft::detail::fourierft::FourierFT)
