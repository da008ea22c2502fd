#pragma once

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

namespace peft::detail {

/// Forward calls compiled into the code that calls inject_adapter_in_model. Injection runs them once on
/// probe layers: they resolve LibTorch's layer forwards exactly as the caller's model code does, so
/// they show whether that code's calls will reach the adapters.
struct CallerProbes {
  at::Tensor (*linear)(torch::nn::LinearImpl&, const at::Tensor&);
  at::Tensor (*embedding)(torch::nn::EmbeddingImpl&, const at::Tensor&);
  at::Tensor (*conv1d)(torch::nn::Conv1dImpl&, const at::Tensor&);
  at::Tensor (*conv2d)(torch::nn::Conv2dImpl&, const at::Tensor&);
  at::Tensor (*conv3d)(torch::nn::Conv3dImpl&, const at::Tensor&);
  at::Tensor (*layer_norm)(torch::nn::LayerNormImpl&, const at::Tensor&);
};

template <class Layer>
at::Tensor call_forward_as_caller(Layer& layer, const at::Tensor& input) {
  return layer.forward(input);
}

template <class = void>
const CallerProbes& caller_probes() {
  static const CallerProbes probes{
      &call_forward_as_caller<torch::nn::LinearImpl>, &call_forward_as_caller<torch::nn::EmbeddingImpl>,
      &call_forward_as_caller<torch::nn::Conv1dImpl>, &call_forward_as_caller<torch::nn::Conv2dImpl>,
      &call_forward_as_caller<torch::nn::Conv3dImpl>, &call_forward_as_caller<torch::nn::LayerNormImpl>};
  return probes;
}

}  // namespace peft::detail
