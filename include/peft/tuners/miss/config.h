#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// MiSS (https://arxiv.org/abs/2409.15371, the successor of Bone): a shared block added to every r-wide
/// shard of the weight; the "bat" variant couples the shards non-linearly. Targets Linear layers.
class PEFT_API MissConfig : public MethodConfig<MissConfig> {
 public:
  std::string peft_type() const override { return "MISS"; }

  /// Shard width along in_features.
  TORCH_ARG(int64_t, r) = 64;
  /// Dropout on the layer input before the adapter's path (training only).
  TORCH_ARG(double, miss_dropout) = 0.0;
  /// With init_weights "mini": the block's width along out_features (out_features must be a multiple).
  TORCH_ARG(int64_t, mini_r) = 1;
  /// true (zero block: the default MiSS), false (random), "bat" or "mini".
  TORCH_ARG(InitWeights, init_weights) = true;
  /// "none", "all" or "MiSS_only".
  TORCH_ARG(std::string, bias) = "none";
};

}  // namespace peft
