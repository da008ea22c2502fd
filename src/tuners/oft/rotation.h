#pragma once

// The orthogonal block rotations OFT builds from its parameters (Python PEFT's OFTRotationModule): each row
// of the (blocks, n_elements) parameter is the upper triangle of a skew-symmetric matrix Q, turned into an
// orthogonal block by the Cayley transform (I - Q)(I + Q)^-1 or its Neumann-series approximation.

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace peft::detail::oft {

struct RotationSpec {
  int64_t blocks = 0;      // r: block positions along the features
  int64_t block_size = 0;
  bool block_share = false;  // one parameter row serves every block position
  bool coft = false;
  double eps = 6e-5;
  bool use_cayley_neumann = true;
  int64_t neumann_terms = 5;
};

/// The ModuleDict entry holding one adapter's parameter as `weight`, like Python's OFTRotationModule.
class RotationModuleImpl : public torch::nn::Module {
 public:
  explicit RotationModuleImpl(at::Tensor weight);
  void pretty_print(std::ostream& stream) const override;
};

/// The (rows, block, block) rotations of `weight`; with coft, `weight` is first projected in place (as Python
/// does at every forward).
at::Tensor rotation_blocks(const at::Tensor& weight, const RotationSpec& spec);

/// Rotates the last dimension of x (..., blocks * block) block by block: x_block -> x_block R_block.
at::Tensor rotate(const at::Tensor& x, const at::Tensor& blocks, const RotationSpec& spec);

/// The block-diagonal (features, features) matrix of the rotations.
at::Tensor block_diagonal(const at::Tensor& blocks, const RotationSpec& spec);

/// The block size / count Python PEFT picks when the requested one does not divide `features`.
int64_t adjust_to_divisor(int64_t features, int64_t requested);

}  // namespace peft::detail::oft
