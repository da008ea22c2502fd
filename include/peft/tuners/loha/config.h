#pragma once

#include <cstdint>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// LoHa (LyCORIS, https://arxiv.org/abs/2108.06098): the update is the Hadamard product of two low-rank
/// products, dW = (W1a W1b) * (W2a W2b) * alpha / r. Targets Linear, Conv1d and Conv2d layers.
class PEFT_API LoHaConfig : public MethodConfig<LoHaConfig> {
 public:
  std::string peft_type() const override { return "LOHA"; }

  TORCH_ARG(int64_t, r) = 8;
  TORCH_ARG(double, alpha) = 8;
  /// Probability of dropping each output row of the update during training.
  TORCH_ARG(double, rank_dropout) = 0.0;
  /// Probability of skipping the whole adapter in a training forward.
  TORCH_ARG(double, module_dropout) = 0.0;
  /// For convolutions: a CP-decomposed kernel (Tucker core + factors) instead of flattening it.
  TORCH_ARG(bool, use_effective_conv2d) = false;
  /// true: W2b starts at zero (the adapter is a no-op); false: all factors random.
  TORCH_ARG(bool, init_weights) = true;
  TORCH_ARG(PatternMap<int64_t>, rank_pattern);
  TORCH_ARG(PatternMap<double>, alpha_pattern);
};

}  // namespace peft
