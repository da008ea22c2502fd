#include "tuners/lora/layer.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <torch/nn/functional/embedding.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>

#include <peft/error.h>

#include "core/sample_routing.h"
#include "tuners/lora/alora.h"
#include "tuners/lora/bdlora.h"
#include "tuners/lora/arrow.h"
#include "tuners/lora/dora.h"
#include "tuners/xlora/routing.h"

namespace peft::detail::lora {
namespace {

at::Tensor cast_to(const at::Tensor& x, c10::ScalarType dtype) {
  return x.scalar_type() == dtype ? x : x.to(dtype);
}

at::Tensor apply_dropout(const LoraAdapter& a, const at::Tensor& x) {
  return a.dropout_impl ? a.dropout_impl->forward(x) : x;
}

// LibTorch's layer classes derive virtually from Module, so getting back to them takes a dynamic_cast;
// the linear path, the hot one, uses pointers cast once when the adapter was created.
at::Tensor conv_forward(LayerKind kind, torch::nn::Module& conv, const at::Tensor& x) {
  switch (kind) {
    case LayerKind::Conv1d: return dynamic_cast<torch::nn::Conv1dImpl&>(conv).forward(x);
    case LayerKind::Conv2d: return dynamic_cast<torch::nn::Conv2dImpl&>(conv).forward(x);
    default: return dynamic_cast<torch::nn::Conv3dImpl&>(conv).forward(x);
  }
}

const at::Tensor& conv_weight(LayerKind kind, const torch::nn::Module& conv) {
  switch (kind) {
    case LayerKind::Conv1d: return dynamic_cast<const torch::nn::Conv1dImpl&>(conv).weight;
    case LayerKind::Conv2d: return dynamic_cast<const torch::nn::Conv2dImpl&>(conv).weight;
    default: return dynamic_cast<const torch::nn::Conv3dImpl&>(conv).weight;
  }
}

}  // namespace

const std::vector<std::string>& LoraLayer::containers() {
  static const std::vector<std::string> names{"lora_dropout",     "lora_A",           "lora_B",
                                              "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"};
  return names;
}

std::shared_ptr<LoraLayer> LoraLayer::create(
    const LayerRequest& request, const Method& method,
    std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>& attachments) {
  auto layer = std::make_shared<LoraLayer>(request, method);
  auto dropout = std::make_shared<AnchoredModuleDictImpl>();
  dropout->adapters = layer;
  layer->dropout_ = dropout.get();
  attachments = {{"lora_dropout", dropout},          {"lora_A", layer->A_},
                 {"lora_B", layer->B_},              {"lora_embedding_A", layer->embedding_A_},
                 {"lora_embedding_B", layer->embedding_B_}, {"lora_magnitude_vector", layer->magnitude_}};
  return layer;
}

LoraLayer::LoraLayer(const LayerRequest& request, const Method& method)
    : AdapterLayer(request.base, request.module_name),
      method_(method),
      A_(std::make_shared<torch::nn::ModuleDictImpl>()),
      B_(std::make_shared<torch::nn::ModuleDictImpl>()),
      embedding_A_(std::make_shared<ParameterDictImpl>()),
      embedding_B_(std::make_shared<ParameterDictImpl>()),
      magnitude_(std::make_shared<torch::nn::ModuleDictImpl>()),
      fan_in_fan_out_(request.base.fan_in_fan_out) {}

void LoraLayer::add(std::shared_ptr<LoraAdapter> adapter, std::shared_ptr<const PeftConfig> config) {
  const std::string& name = adapter->name;
  dropout_->update({{name, adapter->dropout_module}});
  if (adapter->A) {
    A_->update({{name, adapter->A}});
    B_->update({{name, adapter->B}});
  } else {
    embedding_A_->insert(name, adapter->embedding_A);
    embedding_B_->insert(name, adapter->embedding_B);
  }
  if (adapter->magnitude) magnitude_->update({{name, adapter->magnitude}});
  add_adapter(std::move(adapter), std::move(config));
}

void LoraLayer::remove_adapter(torch::nn::Module&, const std::string& name) {
  erase_from(*dropout_, name);
  erase_from(*A_, name);
  erase_from(*B_, name);
  erase_from(*magnitude_, name);
  if (embedding_A_->contains(name)) embedding_A_->pop(name);
  if (embedding_B_->contains(name)) embedding_B_->pop(name);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    dora_norms_.erase(name);
  }
  remove_adapter_record(name);
}

std::shared_ptr<const LoraAdapter> LoraLayer::adapter(const std::string& name) const {
  return std::static_pointer_cast<const LoraAdapter>(record(name));
}

void LoraLayer::set_scaling(const std::string& name, double scaling) {
  const std::shared_ptr<const LoraAdapter> current = adapter(name);
  if (!current || current->scaling == scaling) return;
  auto changed = std::make_shared<LoraAdapter>(*current);
  changed->scaling = scaling;
  replace_record(std::move(changed));
}

std::optional<std::vector<std::pair<std::string, double>>> LoraLayer::lora_scalings() const {
  std::vector<std::pair<std::string, double>> out;
  for (const std::string& name : adapter_names()) {
    if (const auto a = adapter(name)) out.emplace_back(name, a->scaling);
  }
  return out;
}

std::pair<at::Tensor, at::Tensor> LoraLayer::lora_weights(const LoraAdapter& a) const {
  if (a.linear_A) return {a.linear_A->weight, a.linear_B->weight};
  if (a.A) return {conv_weight(kind(), *a.A), conv_weight(kind(), *a.B)};
  return {embedding_A_->get(a.name), embedding_B_->get(a.name)};
}

bool LoraLayer::frozen_container(const std::string& name, const std::string& container) const {
  if (container != "lora_B" && container != "lora_embedding_B") return false;
  // Called with the layer's mutex held (set_active_adapters) or from a structural change that must not overlap
  // others: records_ is read directly.
  auto it = records_.find(name);
  return it != records_.end() && static_cast<const LoraAdapter&>(*it->second).frozen_B;
}

std::string LoraLayer::checkpoint_key(std::string key) const {
  // Python PEFT keeps DoRA's old checkpoint format: the magnitude without its ".weight".
  static const std::string dora = "lora_magnitude_vector.weight";
  if (key == dora) return "lora_magnitude_vector";
  return key;
}

at::Tensor LoraLayer::forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) {
  const std::shared_ptr<const AdapterSnapshot> state = snapshot();
  // Inside an X-LoRA pass the layer mixes its experts, whatever is active or disabled (as Python's X-LoRA layers).
  if (const xlora::Mixing* mixing = xlora::current_mixing()) {
    const auto numbered = mixing->numbering->layer_numbers.find(this);
    if (numbered != mixing->numbering->layer_numbers.end()) {
      return xlora::mixed_forward(*this, base, input, base_forward, *state, *mixing, numbered->second);
    }
  }
  // Python's order: disabled, then per-sample adapters, then merged, then the active adapters.
  if (state->disabled) return base_forward(input);
  if (const SampleRouting* routing = sample_routing()) {
    return forward_per_sample(base, input, base_forward, *state, *routing);
  }
  if (state->bypass()) return base_forward(input);
  at::Tensor result = base_forward(input);
  const c10::ScalarType result_dtype = result.scalar_type();
  switch (kind()) {
    case LayerKind::Embedding: result = forward_embedding(base, input, std::move(result), *state); break;
    case LayerKind::Conv1d:
    case LayerKind::Conv2d:
    case LayerKind::Conv3d: result = forward_conv(base, input, std::move(result), *state, base_forward); break;
    default: result = forward_linear(base, input, std::move(result), *state, base_forward); break;
  }
  return cast_to(result, result_dtype);
}

// The layer's output without its bias, for DoRA with active dropout (Python recomputes W x on the dropped x).
at::Tensor LoraLayer::base_without_bias(const at::Tensor& x, BaseForward base_forward) const {
  const at::Tensor bias = base_layer().bias();
  const at::Tensor out = base_forward(x);
  if (!bias.defined()) return out;
  std::vector<int64_t> shape(out.dim(), 1);
  shape[base_layer().is_conv() ? 1 : out.dim() - 1] = -1;
  return out - bias.view(shape);
}

at::Tensor LoraLayer::embed(torch::nn::Module& base, const at::Tensor& ids, const at::Tensor& weight) const {
  const auto& options = dynamic_cast<const torch::nn::EmbeddingImpl&>(base).options;
  return torch::nn::functional::detail::embedding(ids, weight, options.padding_idx(), options.max_norm(),
                                                  options.norm_type(), options.scale_grad_by_freq(), options.sparse());
}

at::Tensor LoraLayer::forward_linear(torch::nn::Module& base, const at::Tensor& x, at::Tensor result,
                                     const AdapterSnapshot& state, BaseForward base_forward) {
  for (const auto& record : state.active) {
    const LoraAdapter* a = &lora(*record);
    const at::Tensor& A = a->linear_A->weight;
    const at::Tensor& B = a->linear_B->weight;
    if (a->arrow) {  // Arrow routing: a per-token mix of the task adapters (arrow.cpp)
      result = result + a->arrow->delta(*a, state, cast_to(x, A.scalar_type()), module_name());
      continue;
    }
    if (a->alora) {  // Python's ALoraLinearVariant: dropout and update on the activated tokens only
      result = alora_forward(*a, x, result, alora_offsets_for(*this), module_name());
      continue;
    }
    at::Tensor input = apply_dropout(*a, cast_to(x, A.scalar_type()));
    if (a->block_diagonal()) {  // BD-LoRA (never with DoRA)
      result = result + bdlora_branch(*a, input) * a->scaling;
      continue;
    }
    if (a->use_dora) {
      // Python's DoraLinearLayer.forward; with active dropout the base output is recomputed on dropped x.
      const bool recompute_base = a->dropout > 0 && base.is_training();
      const BaseLayer& layer = base_layer();
      const at::Tensor weight = cast_to(layer.weight(), input.scalar_type());
      const at::Tensor lora_weight = cast_to(at::matmul(B, A), input.scalar_type());
      const at::Tensor norm = dora_weight_norm(LayerKind::Linear, weight, lora_weight.detach(), a->scaling,
                                               fan_in_fan_out_).detach();
      const at::Tensor scale = (a->magnitude_impl->magnitude() / norm).view({1, -1});
      const at::Tensor lora_result = at::linear(at::linear(input, A), B);
      at::Tensor base_result;
      if (recompute_base) {
        base_result = base_without_bias(input, base_forward);
      } else {
        const at::Tensor bias = layer.bias();
        base_result = bias.defined() ? result - bias : result;
      }
      result = result + ((scale - 1) * base_result + scale * lora_result * a->scaling);
      continue;
    }
    const at::Tensor hidden = at::linear(input, A);
    const int64_t out = B.size(0);
    const bool same_dtype = hidden.scalar_type() == result.scalar_type();
    if (!a->lora_bias && same_dtype && result.is_contiguous()) {
      // One GEMM adds scaling * hidden @ B^T onto the base output (in place when no graph is recorded).
      const at::Tensor hidden2d = hidden.reshape({-1, hidden.size(-1)});
      const bool record_graph = at::GradMode::is_enabled() &&
                                (result.requires_grad() || hidden.requires_grad() || B.requires_grad());
      if (!record_graph) {
        result.view({-1, out}).addmm_(hidden2d, B.t(), /*beta=*/1, /*alpha=*/a->scaling);
      } else {
        result = at::addmm(result.view({-1, out}), hidden2d, B.t(), 1, a->scaling).view(result.sizes());
      }
      continue;
    }
    result = result + at::linear(hidden, B, a->lora_bias ? a->linear_B->bias : at::Tensor()) * a->scaling;
  }
  return result;
}

at::Tensor LoraLayer::forward_embedding(torch::nn::Module& base, const at::Tensor& x, at::Tensor result,
                                        const AdapterSnapshot& state) {
  for (const auto& record : state.active) {
    const LoraAdapter* a = &lora(*record);
    const auto [A, B] = lora_weights(*a);  // A: (r, num_embeddings), B: (embedding_dim, r)
    const at::Tensor after_A = embed(base, x, A.t());
    if (a->use_dora) {
      const at::Tensor& weight = base_layer().weight();
      const at::Tensor lora_weight = at::matmul(A.t(), B.t()).t();
      const at::Tensor norm =
          dora_weight_norm(LayerKind::Embedding, weight, lora_weight.detach(), a->scaling, true).detach();
      const at::Tensor scale = a->magnitude_impl->magnitude() / norm;
      result = scale * result + scale * at::matmul(after_A, B.t()) * a->scaling;
      continue;
    }
    result = result + at::matmul(after_A, B.t()) * a->scaling;
  }
  return result;
}

at::Tensor LoraLayer::forward_conv(torch::nn::Module& base, const at::Tensor& x, at::Tensor result,
                                   const AdapterSnapshot& state, BaseForward base_forward) {
  const LayerKind k = kind();
  for (const auto& record : state.active) {
    const LoraAdapter* a = &lora(*record);
    const auto [A, B] = lora_weights(*a);
    at::Tensor input = apply_dropout(*a, cast_to(x, A.scalar_type()));
    const at::Tensor lora_result = conv_forward(k, *a->B, conv_forward(k, *a->A, input));
    if (a->use_dora) {
      const at::Tensor weight = base_layer().weight();
      const at::Tensor lora_weight = dora_lora_weight(k, A, B, weight.sizes());
      const at::Tensor norm = dora_weight_norm(k, weight, lora_weight.detach(), a->scaling, false).detach();
      const at::Tensor scale = a->magnitude_impl->magnitude() / norm;
      at::Tensor base_result;
      if (a->dropout > 0 && base.is_training()) {
        base_result = base_without_bias(input, base_forward);
      } else {
        const at::Tensor bias = base_layer().bias();
        std::vector<int64_t> shape(result.dim(), 1);
        shape[1] = -1;
        base_result = bias.defined() ? result - bias.view(shape) : result;
      }
      result = result + ((scale - 1) * base_result + scale * lora_result * a->scaling);
      continue;
    }
    result = result + lora_result * a->scaling;
  }
  return result;
}

at::Tensor LoraLayer::lora_branch(torch::nn::Module& base, const LoraAdapter& a, const at::Tensor& x) {
  const auto [A, B] = lora_weights(a);
  switch (kind()) {
    case LayerKind::Embedding: return at::matmul(embed(base, x, A.t()), B.t()) * a.scaling;
    case LayerKind::Conv1d:
    case LayerKind::Conv2d:
    case LayerKind::Conv3d: {
      const at::Tensor input = apply_dropout(a, cast_to(x, A.scalar_type()));
      return conv_forward(kind(), *a.B, conv_forward(kind(), *a.A, input)) * a.scaling;
    }
    default: {
      const at::Tensor input = apply_dropout(a, cast_to(x, A.scalar_type()));
      if (a.block_diagonal()) return bdlora_branch(a, input) * a.scaling;
      return at::linear(at::linear(input, A), B, a.lora_bias ? a.linear_B->bias : at::Tensor()) * a.scaling;
    }
  }
}

at::Tensor LoraLayer::forward_per_sample(torch::nn::Module& base, const at::Tensor& x, BaseForward base_forward,
                                         const AdapterSnapshot& state, const SampleRouting& routing) {
  // Python PEFT's _check_forward_args and _mixed_batch_forward: one pair of products per adapter group.
  check_sample_routing(x, routing, state.merged);
  auto find = [&](const std::string& name) -> const LoraAdapter* {
    const AdapterRecord* record = state.find(name);
    return record ? &lora(*record) : nullptr;
  };
  for (const auto& [name, rows] : routing.groups) {
    const LoraAdapter* a = find(name);
    if (a && a->use_dora) throw ConfigError("Cannot pass `adapter_names` when DoRA is enabled.");
  }
  at::Tensor result = base_forward(x);
  for (const auto& [name, rows] : routing.groups) {
    const LoraAdapter* a = find(name);
    if (!a) continue;  // "__base__", or an adapter this layer does not have
    const at::Tensor index = rows.device() == x.device() ? rows : rows.to(x.device());
    if (a->alora) {  // _mixed_batch_forward: the group's rows with their offsets
      alora_forward_rows(*a, x, result, rows, index, alora_offsets_for(*this), module_name());
      continue;
    }
    const at::Tensor sub = x.index_select(0, index);
    const at::Tensor update = a->arrow ? a->arrow->delta(*a, state, cast_to(sub, a->linear_A->weight.scalar_type()),
                                                         module_name())
                                       : lora_branch(base, *a, sub);
    result.index_add_(0, index, cast_to(update, result.scalar_type()));
  }
  return result;
}

}  // namespace peft::detail::lora
