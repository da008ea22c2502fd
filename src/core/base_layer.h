#pragma once

// What the tuners need to know about a layer they adapt, independent of its C++ type.

#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace peft::detail {

enum class LayerKind { Linear, Embedding, Conv1d, Conv2d, Conv3d, LayerNorm, LinearLike };

const char* layer_kind_name(LayerKind kind);

struct BaseLayer {
  LayerKind kind;
  torch::nn::Module* module;
  /// Linear: in/out features; Embedding: num_embeddings / embedding_dim; Conv: in/out channels;
  /// LayerNorm: normalized size for both.
  int64_t in_features = 0;
  int64_t out_features = 0;
  /// The weight is stored (in, out) instead of (out, in) (GPT-2's Conv1D).
  bool fan_in_fan_out = false;

  at::Tensor weight() const;
  at::Tensor bias() const;  // undefined when the layer has none
  bool is_conv() const { return kind == LayerKind::Conv1d || kind == LayerKind::Conv2d || kind == LayerKind::Conv3d; }
  bool is_linear() const { return kind == LayerKind::Linear || kind == LayerKind::LinearLike; }
};

/// Describes `module` if it is a layer type peft-cpp can adapt (a LibTorch layer, a subclass of one, or a
/// peft::LinearLike); std::nullopt otherwise.
std::optional<BaseLayer> describe_layer(torch::nn::Module& module);

/// The module printed on one line, as in Python PEFT's "Target module ReLU() is not supported".
std::string short_repr(const torch::nn::Module& module);

}  // namespace peft::detail
