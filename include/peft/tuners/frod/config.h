#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// FRoD (https://doi.org/10.1609/aaai.v40i31.39813): the adapted weight itself is re-parameterised as
/// W' = U (S + diag(lambda_l)) V^T. V (in x in) is a basis shared by every targeted layer of one category (the
/// last parts of the layer's name: "q_proj" for "layers.3.q_proj"), computed from those layers' base weights; U
/// (out x in, frozen, not saved) and the trained lambda_l (in) are solved from the layer's weight so that W' = W at
/// the start; S is a sparse (COO) trained matrix whose off-diagonal pattern is drawn once per category. Targets
/// Linear and peft::LinearLike layers (transformers' Conv1D).
class PEFT_API FrodConfig : public MethodConfig<FrodConfig> {
 public:
  std::string peft_type() const override { return "FROD"; }

  /// Seed of the CPU generator that draws every category's sparse pattern (categories in sorted order), as
  /// Python does. Every FRoD adapter of a model must use the same key.
  TORCH_ARG(int64_t, projection_prng_key) = 0;
  /// true: checkpoints hold each category's V, sparse indices and size ("base_model.frod_V.<category>", ...);
  /// false: they are recomputed from the base weights. Every FRoD adapter of a model must agree.
  TORCH_ARG(bool, save_projection) = true;
  /// Dropout probability on the adapter's input.
  TORCH_ARG(double, frod_dropout) = 0.0;
  /// The target stores its weight (in, out); set from the layer where it disagrees (with a warning).
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// "none", "all" or "frod_only".
  TORCH_ARG(std::string, bias) = "none";
  /// true: S starts at zero (W' = W); false: S ~ N(0, 0.1^2) and lambda_l perturbed by N(0, 0.1^2).
  TORCH_ARG(bool, init_weights) = true;
  /// Fraction (0..1) of the in x in entries of S that are trained (off-diagonal ones only; at least one when > 0).
  TORCH_ARG(double, sparse_rate) = 0.01;
  /// The ridge term that keeps the inverses stable while building a category's V.
  TORCH_ARG(double, regularization_alpha) = 1e-3;
  /// Python shows a progress bar while building the projections; read and written, peft-cpp shows none.
  TORCH_ARG(bool, progressbar) = true;
  /// Python keeps the base weights on the CPU when FRoD does not need them; read and written, peft-cpp leaves
  /// the weights where they are (it warns when this is set).
  TORCH_ARG(bool, runtime_offload_base_weight) = false;
};

}  // namespace peft
