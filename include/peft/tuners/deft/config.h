#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// DeFT, Decompositional Efficient Fine-Tuning: a residual projection of the base weight,
/// W' = (I - P_proj) W + Q_P (scaling * R), from a learned direction P (out x r) and injection R (r x in).
/// Targets Linear and peft::LinearLike layers (GPT-2's Conv1D). Merging is exact: the merge keeps the small
/// factor it needs to undo itself.
class PEFT_API DeftConfig : public MethodConfig<DeftConfig> {
 public:
  std::string peft_type() const override { return "DEFT"; }

  /// The rank of P and R (capped at the layer's out_features).
  TORCH_ARG(int64_t, r) = 8;
  /// How P_proj is formed: "relu" (P relu(P)^T, Q_P = P) or "qr" (Q Q^T with Q from the QR of P, Q_P = Q).
  TORCH_ARG(std::string, decomposition_method) = "relu";
  /// With init_weights = false: R ~ N(0, (0.02 * init_scale)^2).
  TORCH_ARG(double, init_scale) = 1.0;
  /// The injection term is scaled by alpha / r; unset (or 0): no scaling.
  TORCH_ARG(std::optional<int64_t>, alpha) = std::nullopt;
  /// PaRa: pure subspace removal, W' = (I - P_proj) W, without R.
  TORCH_ARG(bool, para) = false;
  /// The layer stores its weight as (in, out) (GPT-2's Conv1D); corrected to what the layer says.
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// Dropout probability on the input of the injection term.
  TORCH_ARG(double, deft_dropout) = 0.0;
  /// true: R = right(P)^T W / scaling, so the adapter starts as the identity; false: R random.
  TORCH_ARG(bool, init_weights) = true;
  /// "none", "all" or "deft_only".
  TORCH_ARG(std::string, bias) = "none";
};

}  // namespace peft
