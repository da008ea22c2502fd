#include "tuners/xlora/classifier.h"

#include <ATen/ops/softmax.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <peft/error.h>

namespace peft::detail::xlora {

ClassifierImpl::ClassifierImpl(const XLoraConfig& config, int64_t n_experts, int64_t n_layers,
                               const at::TensorOptions& options)
    : n_experts_(n_experts), n_layers_(n_layers) {
  const int64_t hidden = config.hidden_size().value_or(4096);
  const int64_t outputs = config.layerwise_scalings() ? n_experts * n_layers : n_experts;
  auto linear = [&](int64_t in, int64_t out) {
    torch::nn::Linear layer(torch::nn::LinearOptions(in, out).bias(true));
    layer->to(options.device(), options.dtype().toScalarType());
    return layer;
  };
  if (config.xlora_depth() == 1) {
    layers_->push_back(linear(hidden, outputs));
  } else {
    layers_->push_back(linear(hidden, config.xlora_size()));
    layers_->push_back(torch::nn::ReLU());
    if (config.xlora_dropout_p() > 0) layers_->push_back(torch::nn::Dropout(config.xlora_dropout_p()));
    for (int64_t i = 0; i < config.xlora_depth() - 2; ++i) {
      layers_->push_back(linear(config.xlora_size(), config.xlora_size()));
      layers_->push_back(torch::nn::ReLU());
      if (config.xlora_dropout_p() > 0) layers_->push_back(torch::nn::Dropout(config.xlora_dropout_p()));
    }
    layers_->push_back(linear(config.xlora_size(), outputs));
  }
  register_module("layers", layers_);
}

at::Tensor ClassifierImpl::forward(const at::Tensor& hidden, int64_t batch, int64_t seq, const XLoraConfig& config) {
  at::Tensor logits = layers_->forward(hidden);
  if (!config.layerwise_scalings()) logits = logits.unsqueeze(2).expand({-1, -1, n_layers_, -1});
  at::Tensor scalings = logits.reshape({batch, seq, n_layers_, n_experts_});
  if (config.enable_softmax()) scalings = at::softmax(scalings / config.softmax_temperature(), -1);
  return scalings;
}

}  // namespace peft::detail::xlora
