#pragma once

// Layers whose forward reaches their adapters without relying on call routing.
//
// With the default build on Linux, peft-cpp routes the calls of unmodified torch::nn::Linear, Embedding,
// Conv1d/2d/3d and LayerNorm layers to the adapters injected into them (see README, "How calls reach the
// adapters"). Where that routing is not available (static LibTorch, other platforms, or a build with
// PEFT_INTERPOSE=OFF), build the model from these drop-in types instead: each is the LibTorch layer with a
// forward that consults the adapters first. They print, save and load exactly like the LibTorch layers.

#include <c10/util/C++17.h>  // FunctionRef.h uses c10::invoke_result_t without including it
#include <c10/util/FunctionRef.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

namespace peft {

namespace detail {
at::Tensor route_linear(torch::nn::LinearImpl& layer, const at::Tensor& input);
at::Tensor route_embedding(torch::nn::EmbeddingImpl& layer, const at::Tensor& input);
at::Tensor route_conv1d(torch::nn::Conv1dImpl& layer, const at::Tensor& input);
at::Tensor route_conv2d(torch::nn::Conv2dImpl& layer, const at::Tensor& input);
at::Tensor route_conv3d(torch::nn::Conv3dImpl& layer, const at::Tensor& input);
at::Tensor route_layer_norm(torch::nn::LayerNormImpl& layer, const at::Tensor& input);
}  // namespace detail

#define PEFT_ADAPTER_AWARE_LAYER(Name, route)                                  \
  class Name##Impl : public torch::nn::Name##Impl {                            \
   public:                                                                     \
    using torch::nn::Name##Impl::Name##Impl;                                   \
    at::Tensor forward(const at::Tensor& input) { return route(*this, input); } \
  };                                                                           \
  TORCH_MODULE(Name)

PEFT_ADAPTER_AWARE_LAYER(Linear, detail::route_linear);
PEFT_ADAPTER_AWARE_LAYER(Embedding, detail::route_embedding);
PEFT_ADAPTER_AWARE_LAYER(Conv1d, detail::route_conv1d);
PEFT_ADAPTER_AWARE_LAYER(Conv2d, detail::route_conv2d);
PEFT_ADAPTER_AWARE_LAYER(Conv3d, detail::route_conv3d);
PEFT_ADAPTER_AWARE_LAYER(LayerNorm, detail::route_layer_norm);

#undef PEFT_ADAPTER_AWARE_LAYER

/// The extension point for your own layer types. A layer that computes a linear map y = x W^T + b (or
/// x W + b when its weight is stored transposed, like GPT-2's Conv1D) implements this interface and
/// calls forward_through_adapters from its forward; adapters can then target it like a torch::nn::Linear.
///
///   struct Conv1DImpl : torch::nn::Module, peft::LinearLike {
///     at::Tensor weight, bias;                           // weight: (in, out)
///     at::Tensor linear_weight() const override { return weight; }
///     at::Tensor linear_bias() const override { return bias; }
///     bool weight_is_transposed() const override { return true; }
///     at::Tensor forward(const at::Tensor& x) {
///       return peft::forward_through_adapters(*this, x, [&](const at::Tensor& in) { return at::matmul(in, weight) + bias; });
///     }
///   };
class LinearLike {
 public:
  virtual ~LinearLike() = default;
  /// The weight as stored: (out_features, in_features), or (in, out) when weight_is_transposed().
  virtual at::Tensor linear_weight() const = 0;
  /// The bias (out_features), or an undefined tensor.
  virtual at::Tensor linear_bias() const { return {}; }
  virtual bool weight_is_transposed() const { return false; }
};

/// Runs `base_forward` and the layer's active adapters. Call it from the forward of a LinearLike layer.
at::Tensor forward_through_adapters(torch::nn::Module& layer, const at::Tensor& input,
                                    c10::function_ref<at::Tensor(const at::Tensor&)> base_forward);

}  // namespace peft
