#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// C3A (https://arxiv.org/abs/2407.19342): the update is a block-circulant matrix, applied to the input as a
/// circular convolution per block via the FFT. Targets Linear layers whose in and out features are multiples
/// of block_size.
class PEFT_API C3AConfig : public MethodConfig<C3AConfig> {
 public:
  std::string peft_type() const override { return "C3A"; }

  /// The circulant block size; must divide the in and out features of every targeted layer.
  TORCH_ARG(int64_t, block_size) = 256;
  /// Per-module block sizes, keys matched like LoRA's rank_pattern.
  TORCH_ARG(PatternMap<int64_t>, block_size_pattern);
  /// true (zero kernel: a no-op start), false or "xavier_uniform", "kaiming_uniform", "gaussian".
  TORCH_ARG(InitWeights, init_weights) = std::string("xavier_uniform");
  /// "none", "all" or "c3a_only".
  TORCH_ARG(std::string, bias) = "none";
};

}  // namespace peft
