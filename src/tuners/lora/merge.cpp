// Merging LoRA adapters into the base weight and back (Python PEFT's get_delta_weight, merge, unmerge and
// the DoRA variants' merge_safe / merge_unsafe / unmerge).

#include <ATen/ops/conv1d.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/conv3d.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/matmul.h>
#include <torch/nn/modules/conv.h>

#include <peft/error.h>

#include "core/tensor_slots.h"
#include "tuners/lora/bdlora.h"
#include "tuners/lora/dora.h"
#include "tuners/lora/layer.h"

namespace peft::detail::lora {
namespace {

bool is_conv(LayerKind k) { return k == LayerKind::Conv1d || k == LayerKind::Conv2d || k == LayerKind::Conv3d; }

at::Tensor conv_nd(LayerKind kind, const at::Tensor& input, const at::Tensor& weight) {
  switch (kind) {
    case LayerKind::Conv1d: return at::conv1d(input, weight);
    case LayerKind::Conv2d: return at::conv2d(input, weight);
    default: return at::conv3d(input, weight);
  }
}

int64_t conv_groups(const torch::nn::Module& module, LayerKind kind) {
  switch (kind) {
    case LayerKind::Conv1d: return dynamic_cast<const torch::nn::Conv1dImpl&>(module).options.groups();
    case LayerKind::Conv2d: return dynamic_cast<const torch::nn::Conv2dImpl&>(module).options.groups();
    default: return dynamic_cast<const torch::nn::Conv3dImpl&>(module).options.groups();
  }
}

// m / ||W + delta|| shaped to scale the stored weight row- (or column-) wise.
at::Tensor dora_factor(LayerKind kind, bool fan_in_fan_out, const at::Tensor& magnitude, const at::Tensor& norm,
                       int64_t weight_dim) {
  const at::Tensor factor = magnitude / norm;
  if (kind == LayerKind::Embedding) return factor.view({1, -1});
  if (is_conv(kind)) {
    std::vector<int64_t> shape(weight_dim, 1);
    shape[0] = -1;
    return factor.view(shape);
  }
  const at::Tensor column = factor.view({-1, 1});
  return fan_in_fan_out ? column.t() : column;
}

}  // namespace

at::Tensor LoraLayer::delta_weight(const LoraAdapter& a) const {
  auto [A, B] = lora_weights(a);
  // BD-LoRA: the block-diagonal factor as its full matrix (Python's _get_bdlora_delta_weight).
  if (a.bd_blocks_A) A = block_diagonal_matrix(A, a.bd_blocks_A);
  if (a.bd_blocks_B) B = block_diagonal_matrix(B, a.bd_blocks_B);
  const c10::ScalarType dtype = (kind() == LayerKind::Linear || kind() == LayerKind::LinearLike ? B : A).scalar_type();
  // Half precision matmuls are slow (or missing) on CPUs: compute in float32, as Python PEFT does.
  const bool upcast = B.device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
  if (upcast) {
    A = A.to(at::kFloat);
    B = B.to(at::kFloat);
  }
  at::Tensor delta;
  const LayerKind k = kind();
  if (k == LayerKind::Embedding) {
    delta = at::matmul(B, A).t() * a.scaling;
  } else if (is_conv(k)) {
    const at::Tensor weight = base_layer().weight();
    if (weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1) {  // 1x1 conv: a plain product
      delta = at::matmul(B.squeeze(3).squeeze(2), A.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * a.scaling;
    } else {
      delta = conv_nd(k, A.transpose(0, 1), B).transpose(0, 1) * a.scaling;
    }
  } else {
    delta = at::matmul(B, A);
    if (fan_in_fan_out_) delta = delta.t();
    delta = delta * (doubled_delta_ ? 2 * a.scaling : a.scaling);
  }
  return upcast ? delta.to(dtype) : delta;
}

namespace {

// Adds one adapter into `weight` (and `bias`) in place; returns DoRA's ||W + delta||, needed to unmerge.
at::Tensor merge_into(const LoraLayer& layer, const LoraAdapter& a, const at::Tensor& weight, const at::Tensor& bias) {
  const at::Tensor delta = layer.delta_weight(a);
  at::Tensor norm;
  if (a.use_dora) {
    const LayerKind k = layer.kind();
    const bool fifo = layer.fan_in_fan_out();
    // The norm takes the update in (out, in) layout; delta is in the weight's stored layout.
    const at::Tensor lora_weight = k == LayerKind::Embedding ? delta.t() : (!is_conv(k) && fifo ? delta.t() : delta);
    norm = dora_weight_norm(k, weight, lora_weight, 1.0, fifo).detach();
    const at::Tensor factor = dora_factor(k, fifo, a.magnitude_impl->magnitude(), norm, weight.dim());
    weight.copy_((factor * (weight + delta)).to(weight.scalar_type()));
  } else {
    weight.add_(delta.to(weight.scalar_type()));
  }
  if (a.lora_bias) bias.add_(a.linear_B->bias * a.scaling);
  return norm;
}

}  // namespace

class PendingMerge final : public PendingChange {
 public:
  LoraLayer* layer = nullptr;
  std::vector<std::shared_ptr<const LoraAdapter>> adapters;
  bool in_place = true;
  at::Tensor new_weight, new_bias;  // safe merges: computed and checked already
  std::map<std::string, at::Tensor> norms;

  void commit() override {
    at::NoGradGuard no_grad;
    const BaseLayer& base = layer->base_layer();
    if (in_place) {
      const at::Tensor weight = base.weight(), bias = base.bias();
      for (const auto& a : adapters) norms[a->name] = merge_into(*layer, *a, weight, bias);
    } else {
      base.weight().set_data(new_weight);
      if (new_bias.defined()) base.bias().set_data(new_bias);
    }
    std::lock_guard<std::mutex> lock(layer->mutex_);
    for (const auto& a : adapters) {
      layer->merged_.push_back(a->name);
      if (norms[a->name].defined()) layer->dora_norms_[a->name] = norms[a->name];
    }
    layer->publish();
  }
};

std::unique_ptr<PendingChange> LoraLayer::prepare_merge(torch::nn::Module& module, const std::vector<std::string>& names,
                                                        bool safe_merge) {
  auto pending = std::make_unique<PendingMerge>();
  pending->layer = this;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const std::string& name : names) {
      auto it = records_.find(name);
      if (it == records_.end() || std::find(merged_.begin(), merged_.end(), name) != merged_.end()) continue;
      pending->adapters.push_back(std::static_pointer_cast<const LoraAdapter>(it->second));
    }
  }
  if (pending->adapters.empty()) return nullptr;
  const BaseLayer& base = base_layer();
  const at::Tensor weight = base.weight(), bias = base.bias();
  if (weight.device().is_meta()) throw MergeError("Cannot merge into a layer whose weight is on the meta device.");
  if (is_conv(kind()) && conv_groups(module, kind()) > 1) {
    throw MergeError("Merging is not supported for _ConvNd layers with groups > 1!");
  }
  for (const auto& a : pending->adapters) {
    // Arrow mixes experts per token: no single weight is its merge (Python's ArrowLinearVariant.merge_*).
    if (a->arrow) throw MergeError("Cannot merge an active Arrow router adapter. Remove it first.");
    if (a->alora) {  // Python's ALoraLinearVariant.merge_safe / merge_unsafe
      throw MergeError(std::string(safe_merge ? "aLoRA does not support safe merging." : "aLoRA does not support merging.") +
                       " (adapter '" + a->name + "' on '" + module_name() + "')");
    }
    if (is_meta(a->A ? lora_weights(*a).first : embedding_A_->get(a->name))) {
      throw MergeError("Cannot merge adapter '" + a->name + "': its weights are on the meta device (load them first).");
    }
    if (a->lora_bias && !bias.defined()) {
      throw MergeError("Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.");
    }
  }
  if (!safe_merge) return pending;
  // Safe merge: compute on copies, check, and write only in commit.
  at::NoGradGuard no_grad;
  pending->in_place = false;
  pending->new_weight = weight.detach().clone();
  const bool touches_bias =
      std::any_of(pending->adapters.begin(), pending->adapters.end(), [](const auto& a) { return a->lora_bias; });
  if (touches_bias) pending->new_bias = bias.detach().clone();
  for (const auto& a : pending->adapters) {
    pending->norms[a->name] = merge_into(*this, *a, pending->new_weight, pending->new_bias);
    const bool finite = at::isfinite(pending->new_weight).all().item<bool>() &&
                        (!a->lora_bias || at::isfinite(pending->new_bias).all().item<bool>());
    if (!finite) {
      throw MergeError("NaNs detected in the merged weights. The adapter " + a->name + " seems to be broken");
    }
  }
  return pending;
}

void LoraLayer::unmerge(torch::nn::Module&) {
  at::NoGradGuard no_grad;
  std::lock_guard<std::mutex> lock(mutex_);
  const BaseLayer& base = base_layer();
  const at::Tensor weight = base.weight(), bias = base.bias();
  while (!merged_.empty()) {
    const std::string name = merged_.back();
    merged_.pop_back();
    auto it = records_.find(name);
    if (it == records_.end()) continue;
    const LoraAdapter& a = lora(*it->second);
    const at::Tensor delta = delta_weight(a);
    if (a.use_dora) {
      const at::Tensor factor =
          dora_factor(kind(), fan_in_fan_out_, a.magnitude_impl->magnitude(), dora_norms_.at(name), weight.dim());
      weight.set_data((weight / factor - delta).to(weight.scalar_type()));
      dora_norms_.erase(name);
    } else {
      weight.sub_(delta.to(weight.scalar_type()));
    }
    if (a.lora_bias) bias.sub_(a.linear_B->bias * a.scaling);
  }
  publish();
}

}  // namespace peft::detail::lora
