#include "routing/router.h"

#include <atomic>

#include <peft/error.h>

#include "core/adapter_layer.h"

namespace peft::detail {
namespace {

// Without libpeft_interpose, a call from this library binds to LibTorch's forward.
OriginalForwards direct_calls() {
  OriginalForwards direct;
#define PEFT_DIRECT(Name) \
  direct.Name = [](torch::nn::Name##Impl& layer, const at::Tensor& x) { return layer.torch::nn::Name##Impl::forward(x); };
  PEFT_ROUTED_LAYERS(PEFT_DIRECT)
#undef PEFT_DIRECT
  direct.MultiheadAttention = [](torch::nn::MultiheadAttentionImpl& layer, const AttentionCall& c) {
    return layer.torch::nn::MultiheadAttentionImpl::forward(c.query, c.key, c.value, c.key_padding_mask,
                                                             c.need_weights, c.attn_mask, c.average_attn_weights);
  };
  return direct;
}

OriginalForwards originals = direct_calls();
std::atomic<bool> interposed{false};

template <class Layer>
at::Tensor route_to_adapters(Layer& layer, const at::Tensor& input) {
  if (AdapterLayer* adapters = adapter_layer_of(layer)) {
    return run_adapters(*adapters, layer, input, [&layer](const at::Tensor& x) { return original_forward(layer, x); });
  }
  return original_forward(layer, input);
}

}  // namespace

void install_original_forwards(const OriginalForwards& installed) {
  // Runs while libpeft_interpose is being loaded, before any of its forwards can be called.
  originals = installed;
  interposed.store(true);
}

bool interpose_library_loaded() { return interposed.load(); }

#define PEFT_ROUTE(Name)                                                                   \
  at::Tensor original_forward(torch::nn::Name##Impl& layer, const at::Tensor& input) {     \
    return originals.Name(layer, input);                                                   \
  }                                                                                        \
  at::Tensor route(torch::nn::Name##Impl& layer, const at::Tensor& input) { return route_to_adapters(layer, input); }
PEFT_ROUTED_LAYERS(PEFT_ROUTE)
#undef PEFT_ROUTE

AttentionOutput original_forward(torch::nn::MultiheadAttentionImpl& layer, const AttentionCall& call) {
  return originals.MultiheadAttention(layer, call);
}

AttentionOutput route(torch::nn::MultiheadAttentionImpl& layer, const AttentionCall& call) {
  if (AdapterLayer* adapters = adapter_layer_of(layer)) {
    return adapters->forward_attention(layer, call, [&layer](const AttentionCall& c) { return original_forward(layer, c); });
  }
  return original_forward(layer, call);
}

}  // namespace peft::detail

namespace peft {

at::Tensor forward_through_adapters(torch::nn::Module& layer, const at::Tensor& input,
                                    c10::function_ref<at::Tensor(const at::Tensor&)> base_forward) {
  if (detail::AdapterLayer* adapters = detail::adapter_layer_of(layer)) {
    return detail::run_adapters(*adapters, layer, input, base_forward);
  }
  return base_forward(input);
}

}  // namespace peft
