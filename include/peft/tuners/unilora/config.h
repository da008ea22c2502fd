#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// UniLoRA (https://arxiv.org/abs/2506.00799): one trainable vector theta_d (theta_d_length entries) per adapter,
/// shared by every adapted layer. Each entry of every layer's LoRA factors A (r x in) and B (out x r) is theta_d at
/// a fixed index, times 1 / sqrt(how many entries of the whole adapter use that index); the indices are a balanced,
/// shuffled assignment drawn with numpy's PCG64 generator seeded by proj_seed, exactly as Python PEFT draws them.
/// dW = B A. Targets Linear and peft::LinearLike layers (transformers' Conv1D).
class PEFT_API UniLoraConfig : public MethodConfig<UniLoraConfig> {
 public:
  std::string peft_type() const override { return "UNILORA"; }

  /// The rank of the update B A.
  TORCH_ARG(int64_t, r) = 4;
  /// Seed of the index assignment (numpy's default_rng(proj_seed)); must not be negative.
  TORCH_ARG(int64_t, proj_seed) = 42;
  /// Length of the shared trainable vector theta_d.
  TORCH_ARG(int64_t, theta_d_length) = 256;
  /// Dropout probability on the adapter's input.
  TORCH_ARG(double, unilora_dropout) = 0.0;
  /// The target stores its weight (in, out); set from the layer where it disagrees (with a warning).
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// "none", "all" or "unilora_only".
  TORCH_ARG(std::string, bias) = "none";
  /// With init_weights, theta_d starts uniform in [-bound, bound].
  TORCH_ARG(double, init_theta_d_bound) = 0.02;
  /// true: theta_d starts uniform in [-init_theta_d_bound, init_theta_d_bound]; false: standard normal.
  TORCH_ARG(bool, init_weights) = true;
  /// true: checkpoints hold every layer's index and scale buffers (unilora_indices_A/B, unilora_scales_A/B);
  /// false: they are regenerated from proj_seed when the adapter is loaded. Every UniLoRA adapter of a model must
  /// agree.
  TORCH_ARG(bool, save_indices) = false;
};

}  // namespace peft
