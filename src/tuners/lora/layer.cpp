#include "tuners/lora/layer.h"

#include <atomic>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <torch/nn/functional/embedding.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include "tuners/lora/dora.h"

namespace peft::detail::lora {
namespace {

at::Tensor cast_to(const at::Tensor& x, c10::ScalarType dtype) {
  return x.scalar_type() == dtype ? x : x.to(dtype);
}

at::Tensor apply_dropout(const Adapter& a, const at::Tensor& x) {
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
    const BaseLayer& base, std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>& attachments) {
  auto dropout = std::make_shared<AnchoredModuleDictImpl>();
  auto A = std::make_shared<torch::nn::ModuleDictImpl>();
  auto B = std::make_shared<torch::nn::ModuleDictImpl>();
  auto embedding_A = std::make_shared<ParameterDictImpl>();
  auto embedding_B = std::make_shared<ParameterDictImpl>();
  auto magnitude = std::make_shared<torch::nn::ModuleDictImpl>();
  auto layer = std::make_shared<LoraLayer>(base, A, B, embedding_A, embedding_B, magnitude);
  layer->dropout_ = dropout.get();
  dropout->tuner = layer;
  attachments = {{"lora_dropout", dropout}, {"lora_A", A},
                 {"lora_B", B},             {"lora_embedding_A", embedding_A},
                 {"lora_embedding_B", embedding_B}, {"lora_magnitude_vector", magnitude}};
  return layer;
}

LoraLayer::LoraLayer(const BaseLayer& base, std::shared_ptr<torch::nn::ModuleDictImpl> A,
                     std::shared_ptr<torch::nn::ModuleDictImpl> B,
                     std::shared_ptr<ParameterDictImpl> embedding_A,
                     std::shared_ptr<ParameterDictImpl> embedding_B,
                     std::shared_ptr<torch::nn::ModuleDictImpl> magnitude)
    : TunerLayer(base),
      A_(std::move(A)),
      B_(std::move(B)),
      embedding_A_(std::move(embedding_A)),
      embedding_B_(std::move(embedding_B)),
      magnitude_(std::move(magnitude)),
      fan_in_fan_out_(base.fan_in_fan_out),
      view_(std::make_shared<View>()) {}

void LoraLayer::add(std::shared_ptr<Adapter> adapter, std::shared_ptr<const PeftConfig> config) {
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
  {
    std::lock_guard<std::mutex> lock(mutex_);
    by_name_[name] = std::move(adapter);
  }
  add_adapter_record(name, std::move(config));
}

void LoraLayer::publish() {
  auto view = std::make_shared<View>();
  for (const std::string& name : active_) {
    auto it = by_name_.find(name);
    if (it != by_name_.end()) view->active.push_back(it->second);
  }
  view->bypass = view->active.empty() || disabled_ || !merged_.empty();
  std::atomic_store(&view_, std::shared_ptr<const View>(std::move(view)));
}

std::string LoraLayer::checkpoint_key(std::string key) const {
  // Python PEFT keeps DoRA's old checkpoint format: the magnitude without its ".weight".
  static const std::string dora = "lora_magnitude_vector.weight";
  if (key == dora) return "lora_magnitude_vector";
  return key;
}

at::Tensor LoraLayer::forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) {
  const std::shared_ptr<const View> view = std::atomic_load(&view_);
  if (view->bypass) return base_forward(input);
  at::Tensor result = base_forward(input);
  const c10::ScalarType result_dtype = result.scalar_type();
  switch (kind()) {
    case LayerKind::Embedding: result = forward_embedding(base, input, std::move(result), *view); break;
    case LayerKind::Conv1d:
    case LayerKind::Conv2d:
    case LayerKind::Conv3d: result = forward_conv(base, input, std::move(result), *view, base_forward); break;
    default: result = forward_linear(base, input, std::move(result), *view, base_forward); break;
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

at::Tensor LoraLayer::forward_linear(torch::nn::Module& base, const at::Tensor& x, at::Tensor result, const View& view,
                                     BaseForward base_forward) {
  for (const auto& a : view.active) {
    const at::Tensor& A = a->linear_A->weight;
    const at::Tensor& B = a->linear_B->weight;
    at::Tensor input = apply_dropout(*a, cast_to(x, A.scalar_type()));
    if (a->use_dora) {
      // Python's DoraLinearLayer.forward; with active dropout the base output is recomputed on dropped x.
      const bool recompute_base = a->dropout > 0 && base.is_training();
      const BaseLayer& layer = base_layer();
      const at::Tensor weight = cast_to(layer.weight(), input.scalar_type());
      const at::Tensor lora_weight = cast_to(at::matmul(B, A), input.scalar_type());
      const at::Tensor norm = dora_weight_norm(LayerKind::Linear, weight, lora_weight.detach(), a->scaling,
                                               fan_in_fan_out_).detach();
      const at::Tensor& magnitude = a->magnitude_impl->magnitude();
      const at::Tensor scale = (magnitude / norm).view({1, -1});
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
    const at::Tensor& B_bias = a->linear_B->bias;
    result = result + at::linear(hidden, B, a->lora_bias ? B_bias : at::Tensor()) * a->scaling;
  }
  return result;
}

at::Tensor LoraLayer::forward_embedding(torch::nn::Module& base, const at::Tensor& x, at::Tensor result,
                                        const View& view) {
  const auto& embedding = dynamic_cast<const torch::nn::EmbeddingImpl&>(base);
  const auto& options = embedding.options;
  auto embed = [&](const at::Tensor& weight) {
    return torch::nn::functional::detail::embedding(x, weight, options.padding_idx(), options.max_norm(),
                                                    options.norm_type(), options.scale_grad_by_freq(),
                                                    options.sparse());
  };
  for (const auto& a : view.active) {
    const at::Tensor& A = embedding_A_->get(a->name);  // (r, num_embeddings)
    const at::Tensor& B = embedding_B_->get(a->name);  // (embedding_dim, r)
    const at::Tensor after_A = embed(A.t());
    if (a->use_dora) {
      const at::Tensor& weight = embedding.weight;
      const at::Tensor lora_weight = at::matmul(A.t(), B.t()).t();
      const at::Tensor norm = dora_weight_norm(LayerKind::Embedding, weight, lora_weight.detach(), a->scaling,
                                               true).detach();
      const at::Tensor& magnitude = a->magnitude_impl->magnitude();
      const at::Tensor scale = magnitude / norm;
      result = scale * result + scale * at::matmul(after_A, B.t()) * a->scaling;
      continue;
    }
    result = result + at::matmul(after_A, B.t()) * a->scaling;
  }
  return result;
}

at::Tensor LoraLayer::forward_conv(torch::nn::Module& base, const at::Tensor& x, at::Tensor result, const View& view,
                                   BaseForward base_forward) {
  const LayerKind k = kind();
  for (const auto& a : view.active) {
    at::Tensor input = apply_dropout(*a, cast_to(x, conv_weight(k, *a->A).scalar_type()));
    const at::Tensor lora_result = conv_forward(k, *a->B, conv_forward(k, *a->A, input));
    if (a->use_dora) {
      const BaseLayer& layer = base_layer();
      const at::Tensor weight = layer.weight();
      const at::Tensor lora_weight = dora_lora_weight(k, conv_weight(k, *a->A), conv_weight(k, *a->B), weight.sizes());
      const at::Tensor norm = dora_weight_norm(k, weight, lora_weight.detach(), a->scaling, false).detach();
      const at::Tensor& magnitude = a->magnitude_impl->magnitude();
      const at::Tensor scale = magnitude / norm;
      at::Tensor base_result;
      if (a->dropout > 0 && base.is_training()) {
        base_result = base_without_bias(input, base_forward);
      } else {
        const at::Tensor bias = layer.bias();
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

}  // namespace peft::detail::lora
