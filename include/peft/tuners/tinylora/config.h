#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// TinyLoRA (https://arxiv.org/abs/2602.04118, "Learning to Reason in 13 Parameters"): each adapted layer keeps
/// frozen truncated-SVD factors of its base weight W = U S V^T, tinylora_A = sqrt(S_r) V_r^T (r x in) and
/// tinylora_B = U_r sqrt(S_r) (out x r), and a frozen random tensor tinylora_P (u x r x r, N(0, 1/r) from a CPU
/// generator seeded with projection_seed + the layer's index among the targets). The only trained tensor is a
/// vector v of u entries per group of layers (weight_tying): dW = B (sum_i v[i] P[i]) A. Targets Linear,
/// peft::LinearLike (transformers' Conv1D) and Embedding layers.
class PEFT_API TinyLoraConfig : public MethodConfig<TinyLoraConfig> {
 public:
  std::string peft_type() const override { return "TINYLORA"; }

  /// The SVD rank (capped per layer at min(in, out)).
  TORCH_ARG(int64_t, r) = 2;
  /// Length of each trained vector v.
  TORCH_ARG(int64_t, u) = 64;
  /// In [0, 1]: how many layers share one v. 0: one v per layer; 1: one v for all layers; in between,
  /// round(layers * (1 - weight_tying)) groups of consecutive layers (Python's round: half to even).
  TORCH_ARG(double, weight_tying) = 0.0;
  /// Seed of the projection tensors P (layer i draws from a generator seeded with projection_seed + i).
  TORCH_ARG(int64_t, projection_seed) = 42;
  /// true: checkpoints hold every layer's P (tinylora_P); false: P is regenerated from projection_seed when the
  /// adapter is loaded. Every TinyLoRA adapter of a model must agree.
  TORCH_ARG(bool, save_projection) = true;
  /// With init_weights = "uniform", v starts uniform in [-init_v_bound, init_v_bound].
  TORCH_ARG(double, init_v_bound) = 0.02;
  /// Dropout probability on the adapter's input (for an Embedding: on the looked-up rows of tinylora_B).
  TORCH_ARG(double, tinylora_dropout) = 0.0;
  /// The target stores its weight (in, out); set from the layer where it disagrees (with a warning).
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// "none", "all" or "tinylora_only".
  TORCH_ARG(std::string, bias) = "none";
  /// true: v starts at zero (a no-op); "uniform": uniform in [-init_v_bound, init_v_bound]; false: Python leaves v
  /// uninitialised, peft-cpp starts it at zero.
  TORCH_ARG(InitWeights, init_weights) = true;
};

}  // namespace peft
