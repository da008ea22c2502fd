#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// WaveFT (https://arxiv.org/abs/2505.12532): n_frequency learned wavelet coefficients at seeded random
/// positions; the update is their inverse 2-D discrete wavelet transform (or, without `use_idwt`, the
/// sparse coefficient matrix itself) times `scaling`. Targets Linear and peft::LinearLike layers. The
/// positions are not saved: they follow from random_loc_seed, exactly as torch.randperm draws them in Python.
class PEFT_API WaveFTConfig : public MethodConfig<WaveFTConfig> {
 public:
  std::string peft_type() const override { return "WAVEFT"; }

  /// Learned coefficients per layer, at most in_features * out_features.
  TORCH_ARG(int64_t, n_frequency) = 2592;
  /// Factor of the reconstructed update (like LoRA's alpha).
  TORCH_ARG(double, scaling) = 25.0;
  /// The wavelet: the config accepts Python's families db1-db38, sym2-sym20, coif1-coif17; the transform
  /// needs filter coefficients, which Python (and peft-cpp) have for db1-db10, sym2-sym10 and coif1-coif5
  /// only, and Python's coif5 filter is longer than its padding allows: with use_idwt, the others and coif5
  /// are refused when injecting (Python fails in its forward).
  TORCH_ARG(std::string, wavelet_family) = "db1";
  /// true: the update is the inverse wavelet transform of the coefficients; false: the coefficients are
  /// the update's entries (faster).
  TORCH_ARG(bool, use_idwt) = true;
  /// Seed of the generator that draws the coefficients' positions.
  TORCH_ARG(int64_t, random_loc_seed) = 777;
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// "none", "all" or "waveft_only".
  TORCH_ARG(std::string, bias) = "none";
  /// Per-module n_frequency, keys matched like LoRA's rank_pattern.
  TORCH_ARG(PatternMap<int64_t>, n_frequency_pattern);
  /// Share n_frequency * (number of targeted layers) among the targeted layers in proportion to their
  /// in * out (at least one each); n_frequency_pattern is then not used.
  TORCH_ARG(bool, proportional_parameters) = false;
  /// true: coefficients start at zero (a no-op); false: normal with standard deviation 0.01.
  TORCH_ARG(bool, init_weights) = true;
};

}  // namespace peft
