#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// HRA (https://arxiv.org/abs/2405.17484): the base weight is multiplied by a chain of r Householder
/// reflections, W' = W H1 ... Hr, H_i = I - 2 u_i u_i^T. Targets Linear and Conv2d layers.
class PEFT_API HRAConfig : public MethodConfig<HRAConfig> {
 public:
  std::string peft_type() const override { return "HRA"; }

  /// Number of reflections per layer.
  TORCH_ARG(int64_t, r) = 8;
  /// Orthogonalise the reflection vectors (Gram-Schmidt) before use.
  TORCH_ARG(bool, apply_GS) = false;
  /// true: pairs of equal vectors, so the product starts as the identity (needs an even r); false: random.
  TORCH_ARG(bool, init_weights) = true;
  /// "none", "all" or "hra_only".
  TORCH_ARG(std::string, bias) = "none";
};

}  // namespace peft
