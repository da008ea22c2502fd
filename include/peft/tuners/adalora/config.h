#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// Which of a layer's ranks AdaLoRA kept, keyed by "<module>.lora_E" (Python PEFT's rank_pattern).
using AdaLoraRankPattern = std::map<std::string, std::vector<bool>>;

/// AdaLoRA (https://arxiv.org/abs/2303.10512): LoRA in SVD form, dW = B diag(E) A * lora_alpha / ranknum,
/// whose rank budget is reallocated during training (see peft::AdaLoraRankAllocator). Targets Linear,
/// Conv2d and peft::LinearLike layers. Python's LoraConfig fields that AdaLoRA ignores are written with
/// their defaults and must keep them when read.
class PEFT_API AdaLoraConfig : public MethodConfig<AdaLoraConfig> {
 public:
  std::string peft_type() const override { return "ADALORA"; }

  /// The starting rank of every adapted layer.
  TORCH_ARG(int64_t, init_r) = 12;
  /// The average rank the budget shrinks to.
  TORCH_ARG(int64_t, target_r) = 8;
  /// Warm-up steps before the budget starts shrinking.
  TORCH_ARG(int64_t, tinit) = 0;
  /// Final steps with the budget fixed.
  TORCH_ARG(int64_t, tfinal) = 0;
  /// Steps between two reallocations.
  TORCH_ARG(int64_t, deltaT) = 1;
  /// EMA factors of the sensitivity and its uncertainty.
  TORCH_ARG(double, beta1) = 0.85;
  TORCH_ARG(double, beta2) = 0.85;
  /// Weight of the orthogonality penalty on A and B (see AdaLoraRankAllocator::orthogonal_regularization).
  TORCH_ARG(double, orth_reg_weight) = 0.5;
  /// Total training steps; required.
  TORCH_ARG(std::optional<int64_t>, total_step);
  /// Set by the rank allocator; with it, injection creates each layer with only its kept ranks (as Python
  /// PEFT resizes them when loading).
  TORCH_ARG(std::optional<AdaLoraRankPattern>, rank_pattern);
  TORCH_ARG(double, lora_alpha) = 8;
  TORCH_ARG(double, lora_dropout) = 0.0;
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// "none", "all" or "lora_only".
  TORCH_ARG(std::string, bias) = "none";
  /// true: E zero, A and B ~ N(0, 0.02) (a no-op start); false: all ~ N(0, 1).
  TORCH_ARG(bool, init_lora_weights) = true;
  /// LoraConfig's r; unused by AdaLoRA (use init_r), kept so configs round-trip.
  TORCH_ARG(int64_t, r) = 8;
};

}  // namespace peft
