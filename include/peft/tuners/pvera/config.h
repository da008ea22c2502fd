#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// PVeRA (https://arxiv.org/abs/2512.07703), probabilistic VeRA: frozen random projections pvera_A (2r x in) and
/// pvera_B (out x r), shared by every adapted layer of the adapter (sized by the largest targeted layer; each layer
/// uses its left / top slice), and two trained vectors per layer, lambda_b (out) and lambda_d (2r). The input's
/// projection lambda_d * (A x) splits into a mean (first r) and a log-variance (last r); in train mode, or with
/// sample_at_inference, the mean is replaced by mean + eps * exp(logvar / 2), eps ~ N(0, 1); the adapter adds
/// lambda_b * (B z). Merging (and eval without sample_at_inference) uses the mean: dW = diag(lambda_b) B
/// diag(lambda_d[:r]) A[:r]. Targets Linear and peft::LinearLike layers (transformers' Conv1D).
class PEFT_API PveraConfig : public MethodConfig<PveraConfig> {
 public:
  std::string peft_type() const override { return "PVERA"; }

  /// The projections' rank (pvera_A has twice as many rows); larger than a LoRA rank.
  TORCH_ARG(int64_t, r) = 256;
  /// Seed of the CPU generator that draws pvera_A, then pvera_B (kaiming-uniform), exactly as Python does.
  /// Every PVeRA adapter of a model must use the same key.
  TORCH_ARG(int64_t, projection_prng_key) = 0;
  /// true: checkpoints hold pvera_A / pvera_B (as "base_model.pvera_A" / "base_model.pvera_B"); false: they are
  /// regenerated from projection_prng_key when the adapter is loaded. Every PVeRA adapter of a model must agree.
  TORCH_ARG(bool, save_projection) = true;
  /// Dropout probability on the adapter's input.
  TORCH_ARG(double, pvera_dropout) = 0.0;
  /// The initial value of every lambda_d entry (with init_weights).
  TORCH_ARG(double, d_initial) = 0.1;
  /// The target stores its weight (in, out); set from the layer where it disagrees (with a warning).
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// "none", "all" or "pvera_only".
  TORCH_ARG(std::string, bias) = "none";
  /// true: lambda_b = 0 and lambda_d = d_initial (a no-op start); false: lambda_b = 1, lambda_d ~ N(0, 1).
  TORCH_ARG(bool, init_weights) = true;
  /// Sample (mean + noise) in eval mode too; false: eval mode uses the mean.
  TORCH_ARG(bool, sample_at_inference) = false;
  /// Seed of each adapted layer's own CPU generator for the noise (every layer starts from this seed, as in
  /// Python); unset: the noise comes from the default generator of the input's device.
  TORCH_ARG(std::optional<int64_t>, generator_seed) = std::nullopt;
};

}  // namespace peft
