#pragma once

// Where a layer's forward goes: to its adapters when it has any, otherwise straight to LibTorch's own
// forward. The drop-in layers (<peft/layers.h>) call route() from their forward; libpeft_interpose calls it
// from its definitions of LibTorch's forwards. The unadapted case costs one load and one compare.
//
// These functions are exported for libpeft_interpose only; they are not API.

#include <tuple>

#include <ATen/core/Tensor.h>
#include <torch/nn/modules/activation.h>

#include <peft/export.h>
#include <peft/layers.h>

namespace peft::detail {

/// The arguments of torch::nn::MultiheadAttentionImpl::forward.
struct AttentionCall {
  const at::Tensor& query;
  const at::Tensor& key;
  const at::Tensor& value;
  const at::Tensor& key_padding_mask;
  bool need_weights;
  const at::Tensor& attn_mask;
  bool average_attn_weights;
};
using AttentionOutput = std::tuple<at::Tensor, at::Tensor>;

/// LibTorch's own forward of each routed layer type (never a routed one).
struct OriginalForwards {
#define PEFT_ORIGINAL(Name) at::Tensor (*Name)(torch::nn::Name##Impl&, const at::Tensor&) = nullptr;
  PEFT_ROUTED_LAYERS(PEFT_ORIGINAL)
#undef PEFT_ORIGINAL
  AttentionOutput (*MultiheadAttention)(torch::nn::MultiheadAttentionImpl&, const AttentionCall&) = nullptr;
};

/// Called by libpeft_interpose when it is loaded: it defines LibTorch's layer forwards itself, so a direct
/// call from here would come back to it; these are LibTorch's, found behind it in the linker's order.
PEFT_API void install_original_forwards(const OriginalForwards& originals);
/// Whether libpeft_interpose is loaded in this process (it does not say whether its forwards win: see
/// routes_torch_layers()).
bool interpose_library_loaded();

/// route(): the routed forward of each layer type; original_forward(): LibTorch's own.
#define PEFT_ROUTE(Name)                                                            \
  PEFT_API at::Tensor route(torch::nn::Name##Impl& layer, const at::Tensor& input); \
  at::Tensor original_forward(torch::nn::Name##Impl& layer, const at::Tensor& input);
PEFT_ROUTED_LAYERS(PEFT_ROUTE)
#undef PEFT_ROUTE
/// The same for MultiheadAttention, whose forward takes (query, key, value, ...).
PEFT_API AttentionOutput route(torch::nn::MultiheadAttentionImpl& layer, const AttentionCall& call);
AttentionOutput original_forward(torch::nn::MultiheadAttentionImpl& layer, const AttentionCall& call);

/// Throws peft::Error when `layer` is LibTorch's clone of a layer that carries adapters. LibTorch's clone()
/// copies the layer object, empties the copy's registries and calls reset() on it; the copy's weight member
/// (`weight_member`) still holds the original's tensor at that point. libpeft_interpose's reset() asks this
/// before LibTorch's reset runs, so such a clone stops with an error that says what to do instead of
/// LibTorch's "does not have the same number of child modules".
PEFT_API void refuse_clone_of_adapted_layer(const torch::nn::Module& layer, const at::Tensor& weight_member,
                                            const char* layer_type);
/// The same for a drop-in layer's own clone(): refuses when `layer` carries adapters.
void refuse_clone_of_adapted_layer(const torch::nn::Module& layer, const char* layer_type);

}  // namespace peft::detail
