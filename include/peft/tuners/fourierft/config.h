#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// FourierFT (https://arxiv.org/abs/2405.03003): n_frequency learned spectral coefficients at seeded random
/// positions; the update is the real part of their 2-D inverse FFT times `scaling`. Targets Linear and
/// peft::LinearLike layers. The positions are not saved: they follow from random_loc_seed, exactly as
/// torch.randperm draws them in Python.
class PEFT_API FourierFTConfig : public MethodConfig<FourierFTConfig> {
 public:
  std::string peft_type() const override { return "FOURIERFT"; }

  TORCH_ARG(int64_t, n_frequency) = 1000;
  TORCH_ARG(double, scaling) = 150.0;
  TORCH_ARG(int64_t, random_loc_seed) = 777;
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// Per-module n_frequency, keys matched like LoRA's rank_pattern.
  TORCH_ARG(PatternMap<int64_t>, n_frequency_pattern);
  /// false: spectrum ~ N(0, 1); true: zeros (a no-op start).
  TORCH_ARG(bool, init_weights) = false;
  /// "none", "all" or "fourier_only".
  TORCH_ARG(std::string, bias) = "none";
};

}  // namespace peft
