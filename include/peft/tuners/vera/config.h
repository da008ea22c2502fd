#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// VeRA (https://arxiv.org/abs/2310.11454): frozen random projections vera_A (r x in) and vera_B (out x r),
/// shared by every adapted layer of the adapter (sized by the largest targeted layer; each layer uses its top-left
/// slice), and two trained vectors per layer: dW = diag(lambda_b) B diag(lambda_d) A. Targets Linear and
/// peft::LinearLike layers (transformers' Conv1D).
class PEFT_API VeraConfig : public MethodConfig<VeraConfig> {
 public:
  std::string peft_type() const override { return "VERA"; }

  /// The projections' rank; VeRA trains few parameters, so it is larger than a LoRA rank.
  TORCH_ARG(int64_t, r) = 256;
  /// Seed of the CPU generator that draws vera_A, then vera_B (kaiming-uniform), exactly as Python does.
  /// Every VeRA adapter of a model must use the same key.
  TORCH_ARG(int64_t, projection_prng_key) = 0;
  /// true: checkpoints hold vera_A / vera_B (as "base_model.vera_A" / "base_model.vera_B"); false: they are
  /// regenerated from projection_prng_key when the adapter is loaded. Every VeRA adapter of a model must agree.
  TORCH_ARG(bool, save_projection) = true;
  /// Dropout probability on the adapter's input.
  TORCH_ARG(double, vera_dropout) = 0.0;
  /// The initial value of every lambda_d entry (with init_weights).
  TORCH_ARG(double, d_initial) = 0.1;
  /// The target stores its weight (in, out); set from the layer where it disagrees (with a warning).
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// "none", "all" or "vera_only".
  TORCH_ARG(std::string, bias) = "none";
  /// true: lambda_b = 0 and lambda_d = d_initial (a no-op start); false: lambda_b = 1, lambda_d ~ N(0, 1).
  TORCH_ARG(bool, init_weights) = true;
};

}  // namespace peft
