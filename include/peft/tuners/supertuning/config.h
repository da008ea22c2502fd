#pragma once

#include <cstdint>
#include <optional>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// Super-Tuning (https://arxiv.org/abs/2607.09287): the base weight stays frozen and a sparse support of its
/// entries, chosen by magnitude, is trained (`supertuning_values` at the flat positions `supertuning_indices`,
/// int32). With `r` set ("Supra"), a LoRA pair `supertuning_lora_A` / `supertuning_lora_B` scaled by
/// lora_alpha / r is added. Targets Linear layers.
class PEFT_API SupertuningConfig : public MethodConfig<SupertuningConfig> {
 public:
  std::string peft_type() const override { return "SUPERTUNING"; }

  /// The share of the weight's entries left frozen, in [0, 1): int(numel * (1 - sparsity)) entries train.
  TORCH_ARG(double, sparsity) = 0.99;
  /// true: the largest-magnitude entries train; false: the smallest.
  TORCH_ARG(bool, select_top) = true;
  /// The LoRA rank of Supra mode; unset: the sparse support alone.
  TORCH_ARG(std::optional<int64_t>, r) = std::nullopt;
  /// The LoRA scaling numerator; unset with `r` set: 2 * r (written so into adapter_config.json, as Python does).
  TORCH_ARG(std::optional<double>, lora_alpha) = std::nullopt;
  /// Dropout on the LoRA path's input, in [0, 1).
  TORCH_ARG(double, lora_dropout) = 0.0;
  /// true: the values and LoRA B start at zero (a no-op); false: values standard normal, B Kaiming-uniform.
  TORCH_ARG(bool, init_weights) = true;
  /// false: the indices are left out of checkpoints and recomputed from the base weights when loading (the
  /// base weights must then be the training ones). A layer follows its first adapter's setting.
  TORCH_ARG(bool, save_precomputed_indices) = true;
};

}  // namespace peft
