#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// Lily, Low-Rank Interconnected Adaptation across Layers (https://arxiv.org/abs/2407.09946). Each adapted
/// layer adds scaling * (x A^T) B, where the "low-projector" A (r x in) is shared by `stride_A` consecutive
/// layers and B is a router-weighted mix of `num_B` "high-projectors" shared by every layer of a group. A group
/// is the layers matching the same entry of target_modules (the whole regex when target_modules is one) with
/// the same weight shape, in model order. Targets torch::nn::Linear layers only. Cannot be merged.
/// The checkpoint holds every layer's copy of the shared tensors under its own keys, as Python PEFT's does.
/// LibTorch's Module::parameters() lists a shared tensor once per layer holding it (Python's lists it once):
/// give an optimizer each tensor once.
class PEFT_API LilyConfig : public MethodConfig<LilyConfig> {
 public:
  std::string peft_type() const override { return "LILY"; }

  /// The rank: A is (r x in), each of the num_B experts in B is (r x out).
  TORCH_ARG(int64_t, r) = 32;
  /// How many consecutive layers of a group share one A (1: each layer its own).
  TORCH_ARG(int64_t, stride_A) = 1;
  /// How many B experts the router mixes; at least 2.
  TORCH_ARG(int64_t, num_B) = 2;
  /// Multiplies the adapter's output (no alpha / r).
  TORCH_ARG(double, scaling) = 1.0;
  /// true: B starts at zero (the adapter starts as a no-op); false: B is random (kaiming uniform) too.
  TORCH_ARG(bool, init_weights) = true;
};

}  // namespace peft
