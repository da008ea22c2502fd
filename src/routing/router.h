#pragma once

// Where a layer's forward goes: to its adapters when it has any, otherwise straight to LibTorch's
// implementation. The unadapted case costs one load and one compare (see find_tuner).

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "core/tuner_layer.h"

namespace peft::detail {

/// LibTorch's own forward of `Layer` (never the routed one).
template <class Layer>
at::Tensor original_forward(Layer& layer, const at::Tensor& input);

template <class Layer>
at::Tensor route(Layer& layer, const at::Tensor& input) {
  if (TunerLayer* tuner = find_tuner(layer)) {
    return tuner->forward(layer, input, [&layer](const at::Tensor& x) { return original_forward<Layer>(layer, x); });
  }
  return original_forward<Layer>(layer, input);
}

extern template at::Tensor original_forward(torch::nn::LinearImpl&, const at::Tensor&);
extern template at::Tensor original_forward(torch::nn::EmbeddingImpl&, const at::Tensor&);
extern template at::Tensor original_forward(torch::nn::Conv1dImpl&, const at::Tensor&);
extern template at::Tensor original_forward(torch::nn::Conv2dImpl&, const at::Tensor&);
extern template at::Tensor original_forward(torch::nn::Conv3dImpl&, const at::Tensor&);
extern template at::Tensor original_forward(torch::nn::LayerNormImpl&, const at::Tensor&);

/// Whether this build routes calls of unmodified LibTorch layers (PEFT_INTERPOSE).
bool interposition_built();

}  // namespace peft::detail
