#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// PEANuT (https://arxiv.org/abs/2410.01870): a weight-aware update computed from the base weight W by a small
/// network, dW^T = scaling * B(f(... f(W^T A^T) ...)) with `depth` residual encoder/decoder pairs (r x r Linear
/// layers) and the activation f; peanut_A is Linear(out_features -> r), peanut_B Linear(r -> out_features).
/// Targets Linear layers.
class PEFT_API PeanutConfig : public MethodConfig<PeanutConfig> {
 public:
  std::string peft_type() const override { return "PEANUT"; }

  /// The hidden width of the adapter network.
  TORCH_ARG(int64_t, r) = 32;
  /// Hidden layers per encoder / decoder side (0: A and B only).
  TORCH_ARG(int64_t, depth) = 0;
  /// The activation, a key of transformers' ACT2FN ("relu", "gelu", "silu", "tanh", ...).
  TORCH_ARG(std::string, act_fn) = "relu";
  /// Multiplies the update.
  TORCH_ARG(double, scaling) = 1.0;
  /// true: A and the hidden layers kaiming-uniform, B zero (a no-op start); false: B kaiming-uniform too.
  TORCH_ARG(bool, init_weights) = true;
};

}  // namespace peft
