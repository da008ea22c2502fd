#pragma once

// The kinds of layer peft-cpp adapts, and what the methods need to know about a layer independent of its
// C++ type. The routed kinds come from PEFT_ROUTED_LAYERS (<peft/layers.h>), the one list of them; what
// differs per kind (its features, its probe, its copy) is an overload next to the code that needs it, and
// with_layer_type turns a LayerKind back into its LibTorch type.

#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>

#include <peft/layers.h>

namespace peft::detail {

enum class LayerKind {
#define PEFT_KIND(Name) Name,
  PEFT_ROUTED_LAYERS(PEFT_KIND)
#undef PEFT_KIND
  LinearLike,  // a user layer implementing peft::LinearLike (reaches its adapters by calling forward_through_adapters)
  // torch::nn::MultiheadAttention: routed by libpeft_interpose's own forward (query, key, value, ...), not through
  // PEFT_ROUTED_LAYERS' one-tensor forwards. Its "weight" is in_proj_weight (3 * embed_dim, embed_dim).
  MultiheadAttention,
  // A module one of whose parameters LoRA's target_parameters adapts (Python's lora.ParamWrapper): nothing is routed,
  // the delta is added to the parameter itself while the adapter is active (tuners/lora/param_wrapper.h).
  Parameter,
};

/// "Linear", "Conv2d", ..., "LinearLike".
const char* layer_kind_name(LayerKind kind);
/// How error messages name the kind: "`torch::nn::Linear`", "layers implementing `peft::LinearLike`".
std::string layer_kind_label(LayerKind kind);
/// Every routed kind (all but LinearLike), in PEFT_ROUTED_LAYERS order.
const std::vector<LayerKind>& routed_layer_kinds();

/// Calls f(static_cast<torch::nn::XImpl*>(nullptr)) for the LibTorch type of a routed kind; the pointer only
/// carries the type. f must return the same type for every kind.
template <class F>
decltype(auto) with_layer_type(LayerKind kind, F&& f) {
  switch (kind) {
#define PEFT_CASE(Name) \
  case LayerKind::Name: return f(static_cast<torch::nn::Name##Impl*>(nullptr));
    PEFT_ROUTED_LAYERS(PEFT_CASE)
#undef PEFT_CASE
    case LayerKind::LinearLike:
    case LayerKind::MultiheadAttention:
    case LayerKind::Parameter: break;
  }
  TORCH_INTERNAL_ASSERT(false, "with_layer_type: ", layer_kind_name(kind), " has no LibTorch layer type");
}

struct BaseLayer {
  LayerKind kind;
  torch::nn::Module* module;
  /// Linear: in/out features; Embedding: num_embeddings / embedding_dim; Conv: in/out channels;
  /// LayerNorm: normalized size for both; MultiheadAttention: embed_dim / 3 * embed_dim (its in_proj).
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
