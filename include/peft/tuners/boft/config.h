#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// BOFT (https://arxiv.org/abs/2311.06243): orthogonal fine-tuning with a butterfly product of
/// block-diagonal orthogonal factors, plus a learned output scale. Give exactly one of boft_block_size and
/// boft_block_num. Targets Linear and Conv2d layers.
class PEFT_API BOFTConfig : public MethodConfig<BOFTConfig> {
 public:
  std::string peft_type() const override { return "BOFT"; }

  TORCH_ARG(int64_t, boft_block_size) = 4;
  TORCH_ARG(int64_t, boft_block_num) = 0;
  /// Number of butterfly factors; 1 is plain block-diagonal OFT.
  TORCH_ARG(int64_t, boft_n_butterfly_factor) = 1;
  /// Probability of replacing a block by the identity during training.
  TORCH_ARG(double, boft_dropout) = 0.0;
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// true: identity rotation and unit scale (a no-op start); false: random.
  TORCH_ARG(bool, init_weights) = true;
  /// "none", "all" or "boft_only".
  TORCH_ARG(std::string, bias) = "none";
};

}  // namespace peft
