#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// GraLoRA, Granular Low-Rank Adaptation (https://arxiv.org/abs/2505.20355): the layer's (out, in) weight is
/// split into gralora_k x gralora_k blocks, each with its own rank r / gralora_k LoRA pair, so the update has
/// rank up to r * gralora_k for LoRA's parameter count. With hybrid_r > 0 a plain LoRA pair of that rank is
/// added (Hybrid GraLoRA). The update is scaled by alpha / (r + hybrid_r). Targets Linear and
/// peft::LinearLike layers whose in and out features are multiples of gralora_k.
class PEFT_API GraloraConfig : public MethodConfig<GraloraConfig> {
 public:
  std::string peft_type() const override { return "GRALORA"; }

  /// The GraLoRA rank; a multiple of gralora_k.
  TORCH_ARG(int64_t, r) = 32;
  /// The rank of the additional plain LoRA pair (0: none).
  TORCH_ARG(int64_t, hybrid_r) = 0;
  /// The update is scaled by alpha / (r + hybrid_r). Python declares it an int.
  TORCH_ARG(double, alpha) = 64;
  /// Dropout probability on the adapter's input.
  TORCH_ARG(double, gralora_dropout) = 0.0;
  /// The number of blocks along each side of the weight.
  TORCH_ARG(int64_t, gralora_k) = 2;
  /// The layer stores its weight as (in, out) (GPT-2's Conv1D); corrected to what the layer says.
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// "none", "all" or "gralora_only".
  TORCH_ARG(std::string, bias) = "none";
  /// true: A kaiming-uniform, B zeros (a no-op start); false: both kaiming-uniform.
  TORCH_ARG(bool, init_weights) = true;
};

}  // namespace peft
