#pragma once

#include <cstdint>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// LoKr (LyCORIS, https://arxiv.org/abs/2309.14859): the update is a Kronecker product dW = W1 (x) W2 *
/// alpha / r, either factor optionally low-rank. Targets Linear, Conv1d and Conv2d layers.
class PEFT_API LoKrConfig : public MethodConfig<LoKrConfig> {
 public:
  std::string peft_type() const override { return "LOKR"; }

  TORCH_ARG(int64_t, r) = 8;
  TORCH_ARG(double, alpha) = 8;
  TORCH_ARG(double, rank_dropout) = 0.0;
  TORCH_ARG(double, module_dropout) = 0.0;
  TORCH_ARG(bool, use_effective_conv2d) = false;
  /// Decompose W1 into low-rank factors too (when r is small enough).
  TORCH_ARG(bool, decompose_both) = false;
  /// Factor the dimensions around this value (-1: around the square root).
  TORCH_ARG(int64_t, decompose_factor) = -1;
  /// Rescale the rows kept by rank dropout.
  TORCH_ARG(bool, rank_dropout_scale) = false;
  /// true (W1 zero: a no-op start), false (all random), or "lycoris" (W2 zero instead).
  TORCH_ARG(InitWeights, init_weights) = true;
  TORCH_ARG(PatternMap<int64_t>, rank_pattern);
  TORCH_ARG(PatternMap<double>, alpha_pattern);
};

}  // namespace peft
