#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// RandLoRA (https://huggingface.co/papers/2502.00987): full-rank updates from frozen random bases randlora_A
/// (r x 1 x min_dim) and randlora_B (max_dim x num_bases x r), one pair per adapter shared by every adapted layer
/// (sized by the largest targeted layer; each layer uses its slice), and two trained matrices per layer,
/// randlora_lambda (r x num_bases) and randlora_gamma (num_bases x min(in, out)), num_bases = ceil(min(in, out) / r).
/// Targets Linear and peft::LinearLike layers (transformers' Conv1D).
class PEFT_API RandLoraConfig : public MethodConfig<RandLoraConfig> {
 public:
  std::string peft_type() const override { return "RANDLORA"; }

  /// The random bases' rank: a smaller r means more bases, so more trained parameters.
  TORCH_ARG(int64_t, r) = 32;
  /// Seed of the CPU generator that draws randlora_A, then randlora_B, exactly as Python does. Every RandLoRA
  /// adapter of a model must use the same key.
  TORCH_ARG(int64_t, projection_prng_key) = 0;
  /// true: checkpoints hold the bases (under every layer's key and as "base_model.randlora_A" / "_B"); false:
  /// they are regenerated from projection_prng_key. Every RandLoRA adapter of a model must agree.
  TORCH_ARG(bool, save_projection) = true;
  /// Ternary sparse bases (-1, 0, 1 with probabilities 1/6, 2/3, 1/6), normalised by their standard deviation.
  TORCH_ARG(bool, sparse) = false;
  /// Sparser ternary bases (probability 1/sqrt(min_dim) for -1 and 1); wins over `sparse`.
  TORCH_ARG(bool, very_sparse) = false;
  /// Dropout probability on the adapter's input.
  TORCH_ARG(double, randlora_dropout) = 0.0;
  /// The target stores its weight (in, out); set from the layer where it disagrees (with a warning).
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// The update is scaled by randlora_alpha / r.
  TORCH_ARG(int64_t, randlora_alpha) = 640;
  /// "none", "all" or "randlora_only".
  TORCH_ARG(std::string, bias) = "none";
  /// true: lambda = 0 (a no-op start) and gamma = 1 / max(num_bases, min(in, out)); false: lambda ~ N(0, 1) and
  /// gamma = 1 / max(in, out).
  TORCH_ARG(bool, init_weights) = true;
};

}  // namespace peft
