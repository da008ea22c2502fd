#include "core/base_layer.h"

#include "core/module_access.h"

#include <sstream>

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <peft/layers.h>

namespace peft::detail {

const char* layer_kind_name(LayerKind kind) {
  switch (kind) {
    case LayerKind::Linear: return "Linear";
    case LayerKind::Embedding: return "Embedding";
    case LayerKind::Conv1d: return "Conv1d";
    case LayerKind::Conv2d: return "Conv2d";
    case LayerKind::Conv3d: return "Conv3d";
    case LayerKind::LayerNorm: return "LayerNorm";
    case LayerKind::LinearLike: return "LinearLike";
  }
  return "?";
}

at::Tensor BaseLayer::weight() const {
  if (kind == LayerKind::LinearLike) return dynamic_cast<const LinearLike&>(*module).linear_weight();
  const at::Tensor* weight = parameters_of(*module).find("weight");
  return weight ? *weight : at::Tensor();
}

at::Tensor BaseLayer::bias() const {
  if (kind == LayerKind::LinearLike) return dynamic_cast<const LinearLike&>(*module).linear_bias();
  const at::Tensor* bias = parameters_of(*module).find("bias");
  return bias ? *bias : at::Tensor();
}

std::optional<BaseLayer> describe_layer(torch::nn::Module& module) {
  if (auto* emb = dynamic_cast<torch::nn::EmbeddingImpl*>(&module)) {
    return BaseLayer{LayerKind::Embedding, &module, emb->options.num_embeddings(), emb->options.embedding_dim()};
  }
  if (auto* conv = dynamic_cast<torch::nn::Conv1dImpl*>(&module)) {
    return BaseLayer{LayerKind::Conv1d, &module, conv->options.in_channels(), conv->options.out_channels()};
  }
  if (auto* conv = dynamic_cast<torch::nn::Conv2dImpl*>(&module)) {
    return BaseLayer{LayerKind::Conv2d, &module, conv->options.in_channels(), conv->options.out_channels()};
  }
  if (auto* conv = dynamic_cast<torch::nn::Conv3dImpl*>(&module)) {
    return BaseLayer{LayerKind::Conv3d, &module, conv->options.in_channels(), conv->options.out_channels()};
  }
  if (auto* linear = dynamic_cast<torch::nn::LinearImpl*>(&module)) {
    return BaseLayer{LayerKind::Linear, &module, linear->options.in_features(), linear->options.out_features()};
  }
  if (auto* norm = dynamic_cast<torch::nn::LayerNormImpl*>(&module)) {
    int64_t size = 1;
    for (int64_t d : norm->options.normalized_shape()) size *= d;
    return BaseLayer{LayerKind::LayerNorm, &module, size, size};
  }
  if (auto* custom = dynamic_cast<LinearLike*>(&module)) {
    const at::Tensor w = custom->linear_weight();
    if (!w.defined() || w.dim() != 2) return std::nullopt;
    const bool transposed = custom->weight_is_transposed();
    return BaseLayer{LayerKind::LinearLike, &module, w.size(transposed ? 0 : 1), w.size(transposed ? 1 : 0),
                     transposed};
  }
  return std::nullopt;
}

std::string short_repr(const torch::nn::Module& module) {
  std::ostringstream os;
  module.pretty_print(os);
  std::string text = os.str();
  // Modules without a pretty_print of their own print just their name; add "()" like Python.
  if (text.find('(') == std::string::npos) text += "()";
  return text;
}

}  // namespace peft::detail
