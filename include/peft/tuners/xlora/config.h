#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// X-LoRA (Mixture of LoRA Experts, https://arxiv.org/abs/2402.07148): a small classifier reads the model's last
/// hidden state and mixes n LoRA adapters ("experts") per token, in every LoRA layer. Python PEFT's XLoraConfig.
/// An X-LoRA model is not injected with inject_adapter / load_adapter: it needs the model's own hidden-state pass,
/// so it is made with peft::XLoraModel or peft::load_xlora (<peft/tuners/xlora/model.h>).
class PEFT_API XLoraConfig : public MethodConfig<XLoraConfig> {
 public:
  std::string peft_type() const override { return "XLORA"; }

  /// The base model's hidden size (the classifier's input). Unset: 4096 with a warning, as Python PEFT does.
  TORCH_ARG(std::optional<int64_t>, hidden_size) = std::nullopt;
  /// The LoRA experts, name -> adapter directory, in order: expert i is loaded as adapter "i" and mixed with column i
  /// of the scalings. Relative paths are relative to the working directory, as in Python.
  TORCH_ARG(PatternMap<std::string>, adapters);
  /// Softmax over the classifier's outputs.
  TORCH_ARG(bool, enable_softmax) = true;
  /// Softmax over the top-k experts kept per token (needs top_k_lora).
  TORCH_ARG(bool, enable_softmax_topk) = false;
  /// One set of scalings per LoRA layer (the classifier's output is n_layers x n_experts); otherwise one set shared
  /// by all layers.
  TORCH_ARG(bool, layerwise_scalings) = false;
  /// Linear layers of the classifier (ReLU and dropout between them).
  TORCH_ARG(int64_t, xlora_depth) = 1;
  /// Hidden width of the classifier (depth > 1).
  TORCH_ARG(int64_t, xlora_size) = 2048;
  /// Dropout between the classifier's layers (depth > 1, training mode).
  TORCH_ARG(double, xlora_dropout_p) = 0.2;
  /// Train the LoRA experts along with the classifier (otherwise they are frozen).
  TORCH_ARG(bool, use_trainable_adapters) = false;
  /// The classifier's softmax divides its logits by this.
  TORCH_ARG(double, softmax_temperature) = 1.0;
  /// Keep only the k largest scalings of each token (unset: all).
  TORCH_ARG(std::optional<int64_t>, top_k_lora) = std::nullopt;
  /// The scalings every expert gets during the scaling pass (the pass that computes the hidden state the classifier
  /// reads).
  TORCH_ARG(double, scaling_pass_value) = 0.0;
  /// Multiplies every expert's output (outside the scaling-free path).
  TORCH_ARG(double, global_scaling_weight) = 1.0;
};

}  // namespace peft
