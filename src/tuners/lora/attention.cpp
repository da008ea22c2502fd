// LoRA on a torch::nn::MultiheadAttention, Python PEFT's lora.MultiheadAttention: one adapter on in_proj (the
// attention's own lora_A / lora_B, B of 3 * embed_dim rows) and one on out_proj (a LoRA layer of its own). LibTorch's
// attention reads in_proj_weight and out_proj's weight directly, so the forward passes the weights with the active
// adapters' deltas added, which is what Python computes by merging before and unmerging after the call (its
// lora_dropout is not applied there either).

#include <torch/nn/functional/activation.h>
#include <torch/nn/modules/activation.h>

#include <peft/error.h>

#include "routing/router.h"
#include "tuners/lora/layer.h"

namespace peft::detail::lora {
namespace {

// The base weight (detached, as Python's merge reads .data) plus each active adapter's delta. For out_proj,
// delta_weight() is Python's doubled delta, of which only one half carries a gradient (Python adds the second
// through .data; see LoraLayer::mark_attention_out_proj).
at::Tensor with_deltas(const LoraLayer& layer, const AdapterSnapshot& state, const at::Tensor& weight,
                       bool doubled = false) {
  at::Tensor out = weight.detach();
  for (const auto& record : state.active) {
    const at::Tensor delta = layer.delta_weight(lora(*record)).to(weight.scalar_type());
    if (!doubled) {
      out = out + delta;
    } else {
      const at::Tensor half = delta * 0.5;
      out = out + half + half.detach();
    }
  }
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> LoraLayer::forward_attention(torch::nn::MultiheadAttentionImpl& base,
                                                                const AttentionCall& call, AttentionForward original) {
  const std::shared_ptr<const AdapterSnapshot> state = snapshot();
  if (state->bypass()) return original(call);
  auto* out_layer = dynamic_cast<LoraLayer*>(adapter_layer_of(*base.out_proj));
  if (!out_layer) {
    throw Error("The out_proj of the MultiheadAttention '" + module_name() + "' has lost its LoRA layer; inject the "
                "adapter into the attention again.");
  }
  const std::shared_ptr<const AdapterSnapshot> out_state = out_layer->snapshot();
  if (out_state->merged) {
    throw ConfigError("The out_proj layer of MultiheadAttention has merged layers but MultiheadAttention itself "
                      "doesn't; please ensure that either both or none have merged layers");
  }
  const at::Tensor in_weight = with_deltas(*this, *state, base.in_proj_weight);
  const at::Tensor out_weight =
      out_state->disabled ? base.out_proj->weight : with_deltas(*out_layer, *out_state, base.out_proj->weight, true);
  namespace F = torch::nn::functional;
  const auto& o = base.options;
  return F::multi_head_attention_forward(
      call.query, call.key, call.value,
      F::MultiheadAttentionForwardFuncOptions(o.embed_dim(), o.num_heads(), in_weight, base.in_proj_bias, base.bias_k,
                                              base.bias_v, o.add_zero_attn(), o.dropout(), out_weight,
                                              base.out_proj->bias)
          .training(base.is_training())
          .key_padding_mask(call.key_padding_mask)
          .need_weights(call.need_weights)
          .attn_mask(call.attn_mask)
          .average_attn_weights(call.average_attn_weights));
}

}  // namespace peft::detail::lora
