// A LoRA layer's forward inside an X-LoRA pass: its experts mixed per token with the layer's scalings.

#include <limits>

#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/zeros_like.h>
#include <torch/nn/modules/conv.h>

#include <peft/error.h>

#include "tuners/lora/layer.h"
#include "tuners/xlora/routing.h"

namespace peft::detail::xlora {
namespace {

thread_local const Mixing* tls_mixing = nullptr;

// Python's get_maybe_topk_scalings: the layer's (batch, seq, n_experts) scalings, top-k masked, then softmaxed over
// the kept ones.
at::Tensor layer_scalings(const Mixing& mixing, int64_t layer_number) {
  at::Tensor scalings = mixing.scalings.select(2, layer_number);
  if (mixing.top_k) {
    const at::Tensor top = std::get<1>(at::topk(scalings, *mixing.top_k, -1));
    at::Tensor mask = at::zeros_like(scalings, scalings.options().dtype(at::kBool));
    mask.scatter_(-1, top, true);
    scalings = scalings * mask.to(scalings.scalar_type());
  }
  if (mixing.softmax_top_k) {
    const at::Tensor dropped = scalings == 0;
    const at::Tensor full = scalings.masked_fill(dropped, -std::numeric_limits<double>::infinity());
    scalings = at::softmax(full, -1).masked_fill(dropped, 0.0);
  }
  return scalings;
}

at::Tensor conv2d(torch::nn::Module& conv, const at::Tensor& x) {
  return dynamic_cast<torch::nn::Conv2dImpl&>(conv).forward(x);
}

}  // namespace

const Mixing* current_mixing() { return tls_mixing; }

MixingScope::MixingScope(const Mixing& mixing) : previous_(tls_mixing) { tls_mixing = &mixing; }
MixingScope::~MixingScope() { tls_mixing = previous_; }

at::Tensor mixed_forward(lora::LoraLayer& layer, torch::nn::Module& base, const at::Tensor& x,
                         BaseForward base_forward, const AdapterSnapshot& state, const Mixing& mixing,
                         int64_t layer_number) {
  const c10::ScalarType input_dtype = x.scalar_type();
  const at::Tensor scalings = layer_scalings(mixing, layer_number);
  at::Tensor result = base_forward(x);
  if (state.merged) return result;
  const double weight = mixing.global_scaling_weight;
  for (std::size_t i = 0; i < mixing.numbering->experts.size(); ++i) {
    const AdapterRecord* record = state.find(mixing.numbering->experts[i]);
    if (!record) continue;  // this layer lacks the expert
    const lora::LoraAdapter& a = lora::lora(*record);
    if (a.use_dora) throw ConfigError("X-LoRA currently does not support LoRA layers with DoRA");
    const at::Tensor expert_scalings = scalings.select(-1, static_cast<int64_t>(i)).unsqueeze(-1);
    const auto [A, B] = layer.lora_weights(a);
    if (layer.kind() == LayerKind::Embedding) {
      const at::Tensor after_A = layer.embed(base, x, A.t());
      result = result + at::matmul(after_A * expert_scalings, B.t()) * a.scaling * weight;
      continue;
    }
    at::Tensor input = x.scalar_type() == A.scalar_type() ? x : x.to(A.scalar_type());
    input = input * expert_scalings;
    if (a.dropout_impl) input = a.dropout_impl->forward(input);
    at::Tensor update;
    if (layer.kind() == LayerKind::Conv2d) {
      update = conv2d(*a.B, conv2d(*a.A, input));
    } else {
      update = at::linear(at::linear(input, A), B, a.lora_bias ? a.linear_B->bias : at::Tensor());
    }
    result = result + update * a.scaling * weight;
  }
  return layer.kind() == LayerKind::Embedding || result.scalar_type() == input_dtype ? result : result.to(input_dtype);
}

}  // namespace peft::detail::xlora
