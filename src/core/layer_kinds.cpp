#include "core/layer_kinds.h"

#include <sstream>

#include <torch/nn/modules/activation.h>

#include "core/module_access.h"

namespace peft::detail {
namespace {

// (in, out) of each routed kind, as the methods see them.
std::pair<int64_t, int64_t> features(const torch::nn::LinearImpl& l) {
  return {l.options.in_features(), l.options.out_features()};
}
std::pair<int64_t, int64_t> features(const torch::nn::EmbeddingImpl& e) {
  return {e.options.num_embeddings(), e.options.embedding_dim()};
}
template <size_t D, class Derived>
std::pair<int64_t, int64_t> features(const torch::nn::ConvNdImpl<D, Derived>& c) {
  return {c.options.in_channels(), c.options.out_channels()};
}
std::pair<int64_t, int64_t> features(const torch::nn::LayerNormImpl& n) {
  int64_t size = 1;
  for (int64_t d : n.options.normalized_shape()) size *= d;
  return {size, size};
}

}  // namespace

const char* layer_kind_name(LayerKind kind) {
  switch (kind) {
#define PEFT_CASE(Name) \
  case LayerKind::Name: return #Name;
    PEFT_ROUTED_LAYERS(PEFT_CASE)
#undef PEFT_CASE
    case LayerKind::LinearLike: return "LinearLike";
    case LayerKind::MultiheadAttention: return "MultiheadAttention";
    case LayerKind::Parameter: return "Parameter";
  }
  return "?";
}

std::string layer_kind_label(LayerKind kind) {
  if (kind == LayerKind::LinearLike) return "layers implementing `peft::LinearLike` (e.g. a port of transformers' Conv1D)";
  return std::string("`torch::nn::") + layer_kind_name(kind) + "`";
}

const std::vector<LayerKind>& routed_layer_kinds() {
  static const std::vector<LayerKind> kinds{
#define PEFT_KIND(Name) LayerKind::Name,
      PEFT_ROUTED_LAYERS(PEFT_KIND)
#undef PEFT_KIND
  };
  return kinds;
}

at::Tensor BaseLayer::weight() const {
  if (kind == LayerKind::LinearLike) return dynamic_cast<const LinearLike&>(*module).linear_weight();
  const at::Tensor* weight = parameters_of(*module).find(kind == LayerKind::MultiheadAttention ? "in_proj_weight" : "weight");
  return weight ? *weight : at::Tensor();
}

at::Tensor BaseLayer::bias() const {
  if (kind == LayerKind::LinearLike) return dynamic_cast<const LinearLike&>(*module).linear_bias();
  const at::Tensor* bias = parameters_of(*module).find(kind == LayerKind::MultiheadAttention ? "in_proj_bias" : "bias");
  return bias ? *bias : at::Tensor();
}

std::optional<BaseLayer> describe_layer(torch::nn::Module& module) {
  for (LayerKind kind : routed_layer_kinds()) {
    std::optional<BaseLayer> found = with_layer_type(kind, [&](auto* type) -> std::optional<BaseLayer> {
      using Layer = std::remove_pointer_t<decltype(type)>;
      const auto* layer = dynamic_cast<const Layer*>(&module);
      if (!layer) return std::nullopt;
      const auto [in, out] = features(*layer);
      return BaseLayer{kind, &module, in, out};
    });
    if (found) return found;
  }
  if (auto* attention = dynamic_cast<torch::nn::MultiheadAttentionImpl*>(&module)) {
    const int64_t embed_dim = attention->options.embed_dim();
    return BaseLayer{LayerKind::MultiheadAttention, &module, embed_dim, 3 * embed_dim};
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
