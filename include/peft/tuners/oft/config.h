#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// OFT (https://arxiv.org/abs/2306.07280): the layer input (Linear, Conv2d) or output (Embedding) is
/// rotated by a block-diagonal orthogonal matrix, each block the Cayley transform of a learned skew-symmetric
/// matrix. Give exactly one of r (number of blocks) and oft_block_size; a value that does not divide the
/// features is adjusted to the nearest one that does, with a warning.
class PEFT_API OFTConfig : public MethodConfig<OFTConfig> {
 public:
  std::string peft_type() const override { return "OFT"; }

  TORCH_ARG(int64_t, r) = 0;
  TORCH_ARG(int64_t, oft_block_size) = 32;
  /// Kept for Python compatibility; Python PEFT's OFT layers do not apply it in forward either.
  TORCH_ARG(double, module_dropout) = 0.0;
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// true: identity rotation (a no-op start); false: random (normal, std 0.1).
  TORCH_ARG(bool, init_weights) = true;
  /// Constrained OFT: project the parameters into an eps-ball around zero at each forward.
  TORCH_ARG(bool, coft) = false;
  TORCH_ARG(double, eps) = 6e-5;
  /// One block shared by all block positions.
  TORCH_ARG(bool, block_share) = false;
  /// Approximate the Cayley inverse with a Neumann series instead of solving.
  TORCH_ARG(bool, use_cayley_neumann) = true;
  TORCH_ARG(int64_t, num_cayley_neumann_terms) = 5;
  /// "none", "all" or "oft_only".
  TORCH_ARG(std::string, bias) = "none";
};

}  // namespace peft
