#pragma once

// X-LoRA's classifier (Python's XLoraClassifier): hidden state -> per-token scalings of the experts.

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>

#include <peft/tuners/xlora/config.h>

namespace peft::detail::xlora {

class ClassifierImpl : public torch::nn::Module {
 public:
  /// Linear layers as Python builds them (ReLU, and dropout when xlora_dropout_p > 0, between them), registered as
  /// `layers` so the keys are Python's ("layers.0.weight", ...).
  ClassifierImpl(const XLoraConfig& config, int64_t n_experts, int64_t n_layers, const at::TensorOptions& options);

  /// (batch, seq, hidden) -> (batch, seq, n_layers, n_experts): logits, repeated over layers unless layerwise,
  /// then the temperature softmax when enable_softmax.
  at::Tensor forward(const at::Tensor& hidden, int64_t batch, int64_t seq, const XLoraConfig& config);

  int64_t n_experts() const { return n_experts_; }
  int64_t n_layers() const { return n_layers_; }

 private:
  torch::nn::Sequential layers_;
  int64_t n_experts_;
  int64_t n_layers_;
};

}  // namespace peft::detail::xlora
