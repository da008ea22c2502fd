// WaveFT's registration: Python PEFT's WaveFTConfig fields and the layers it adapts.

#include <peft/error.h>

#include "tuners/waveft/layer.h"
#include "tuners/waveft/wavelets.h"

namespace peft::detail::waveft {
namespace {

/// One of the families Python's config accepts (WAVELET_REDUCTIONS), with its message otherwise.
void known_wavelet_family(const std::string&, const std::string& family) {
  std::vector<std::string> accepted;
  for (const auto& entry : wavelet_reductions()) {
    if (entry.first == family) return;
    accepted.push_back(entry.first);
  }
  throw ConfigError("Wavelet family " + family + " not supported. Supported wavelet families are: " +
                    python_list(accepted));
}

class WaveFT final : public MethodOf<WaveFTConfig> {
 public:
  WaveFT() : MethodOf("waveft_") {
    layers({LayerKind::Linear, LayerKind::LinearLike});
    field(PEFT_FIELD(n_frequency)).check(positive());
    field(PEFT_FIELD(scaling));
    field(PEFT_FIELD(wavelet_family)).check(known_wavelet_family);
    field(PEFT_FIELD(use_idwt));
    field(PEFT_FIELD(random_loc_seed));
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(bias)).check(bias_choice("waveft_only"));
    field(PEFT_FIELD(n_frequency_pattern)).check(positive_values());
    field(PEFT_FIELD(proportional_parameters));
    field(PEFT_FIELD(init_weights));
  }

  std::unique_ptr<AdapterBuilder> start(WaveFTConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::waveft

PEFT_REGISTER_METHOD(waveft, peft::detail::waveft::WaveFT)
