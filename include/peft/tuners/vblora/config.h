#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// VB-LoRA (https://arxiv.org/abs/2405.15179): every adapted layer builds its LoRA factors from one vector bank
/// (num_vectors x vector_length) shared by the whole adapter. Each sub-vector of A (r x in) and B (out x r) is the
/// softmax-weighted sum of the topk bank vectors with the largest logits. Targets Linear and peft::LinearLike
/// layers (transformers' Conv1D) whose in and out features are multiples of vector_length.
class PEFT_API VBLoRAConfig : public MethodConfig<VBLoRAConfig> {
 public:
  std::string peft_type() const override { return "VBLORA"; }

  /// The rank of the update B A.
  TORCH_ARG(int64_t, r) = 4;
  /// Vectors in the bank.
  TORCH_ARG(int64_t, num_vectors) = 256;
  /// Length of each bank vector; must divide the in and out features of every targeted layer.
  TORCH_ARG(int64_t, vector_length) = 256;
  /// How many bank vectors each sub-vector mixes (at most num_vectors).
  TORCH_ARG(int64_t, topk) = 2;
  /// true: checkpoints hold only each sub-vector's top-k indices and the first k-1 softmax weights instead of
  /// the logits (much smaller; such an adapter is for inference and merging, not for further training).
  TORCH_ARG(bool, save_only_topk_weights) = false;
  /// Dropout probability on the adapter's input.
  TORCH_ARG(double, vblora_dropout) = 0.0;
  /// The target stores its weight (in, out); set from the layer where it disagrees (with a warning).
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// "none", "all" or "vblora_only".
  TORCH_ARG(std::string, bias) = "none";
  /// The bank starts uniform in [-bound, bound].
  TORCH_ARG(double, init_vector_bank_bound) = 0.02;
  /// The logits start normal with this standard deviation.
  TORCH_ARG(double, init_logits_std) = 0.1;
};

}  // namespace peft
