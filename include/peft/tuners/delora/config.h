#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// DeLoRA, Decoupled Low-rank Adaptation (https://arxiv.org/abs/2503.18225): a rank-r update whose strength is
/// decoupled from its direction, dW = B diag(lambda / r / (|A_i| |B^i|)) A, each input column scaled by the base
/// weight's column norm (kept per adapter as `delora_w_norm`). The Frobenius norm of dW is bounded by the
/// learned `lambda`. Targets Linear layers.
class PEFT_API DeloraConfig : public MethodConfig<DeloraConfig> {
 public:
  std::string peft_type() const override { return "DELORA"; }

  TORCH_ARG(int64_t, r) = 8;
  /// The initial value of the learned boundary lambda (Python declares it an int; fractional values are kept).
  TORCH_ARG(double, delora_lambda) = 15;
  /// Dropout probability on the adapter's input during training.
  TORCH_ARG(double, module_dropout) = 0.0;
  /// "none", "all" or "delora_only".
  TORCH_ARG(std::string, bias) = "none";
  /// true: A kaiming-uniform, B zero (a no-op); false: both kaiming-uniform.
  TORCH_ARG(bool, init_weights) = true;
  /// Per-module ranks and initial lambdas, by Python PEFT's pattern rules.
  TORCH_ARG(PatternMap<int64_t>, rank_pattern);
  TORCH_ARG(PatternMap<double>, lambda_pattern);
};

}  // namespace peft
