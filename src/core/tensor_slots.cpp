#include "core/tensor_slots.h"

#include <cmath>

#include <torch/nn/init.h>

#include <peft/layers.h>

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "core/module_access.h"

namespace peft::detail {
namespace {

template <class Layer>
bool set_member(torch::nn::Module& owner, const std::string& name, const at::Tensor& tensor) {
  auto* layer = dynamic_cast<Layer*>(&owner);
  if (!layer) return false;
  if (name == "weight") layer->weight = tensor;
  if constexpr (!std::is_same_v<Layer, torch::nn::EmbeddingImpl>) {
    if (name == "bias") layer->bias = tensor;
  }
  return true;
}

}  // namespace

bool is_meta(const at::Tensor& tensor) { return tensor.defined() && tensor.device().is_meta(); }

void replace_tensor(torch::nn::Module& owner, const std::string& name, at::Tensor tensor, bool is_buffer) {
  if (is_buffer) {
    at::Tensor* slot = buffers_of(owner).find(name);
    TORCH_CHECK(slot, "no buffer '", name, "' to replace");
    *slot = std::move(tensor);
    return;
  }
  at::Tensor* slot = parameters_of(owner).find(name);
  TORCH_CHECK(slot, "no parameter '", name, "' to replace");
  tensor.set_requires_grad(slot->requires_grad());
  *slot = tensor;
  // LibTorch's layers keep the tensor in a member too (LinearImpl::weight, ...).
#define PEFT_SET_MEMBER(Name) set_member<torch::nn::Name##Impl>(owner, name, tensor) ||
  [[maybe_unused]] const bool routed_layer = PEFT_ROUTED_LAYERS(PEFT_SET_MEMBER) false;
#undef PEFT_SET_MEMBER
}

void SharedReplacements::replace(torch::nn::Module& owner, const std::string& name, bool is_buffer, const Make& make) {
  const at::Tensor* slot = is_buffer ? buffers_of(owner).find(name) : parameters_of(owner).find(name);
  TORCH_CHECK(slot && slot->defined(), "no tensor '", name, "' to replace");
  const c10::TensorImpl* current = slot->unsafeGetTensorImpl();
  auto it = done_.find(current);
  if (it == done_.end()) it = done_.emplace(current, std::make_pair(*slot, make(*slot))).first;
  const at::Tensor replacement = it->second.second;
  if (replacement.unsafeGetTensorImpl() != current) replace_tensor(owner, name, replacement, is_buffer);
}

std::shared_ptr<torch::nn::LinearImpl> make_linear(int64_t in, int64_t out, bool bias, const at::TensorOptions& options) {
  // (in=1, out=0) gives zero-element weights, so LibTorch's constructor allocates and initialises nothing.
  auto layer = std::make_shared<torch::nn::LinearImpl>(torch::nn::LinearOptions(1, 0).bias(bias));
  layer->options = torch::nn::LinearOptions(in, out).bias(bias);
  replace_tensor(*layer, "weight", at::empty({out, in}, options));
  if (bias) replace_tensor(*layer, "bias", at::empty({out}, options));
  return layer;
}

void kaiming_default(const at::Tensor& tensor) { torch::nn::init::kaiming_uniform_(tensor, std::sqrt(5.0)); }

void default_init(const at::Tensor& weight, const at::Tensor& bias) {
  kaiming_default(weight);
  if (bias.defined()) {
    const int64_t fan_in = weight.numel() / weight.size(0);
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

}  // namespace peft::detail

namespace peft {

torch::nn::Linear empty_linear(const torch::nn::LinearOptions& layer, const at::TensorOptions& options) {
  return torch::nn::Linear(detail::make_linear(layer.in_features(), layer.out_features(), layer.bias(), options));
}

torch::nn::Embedding empty_embedding(const torch::nn::EmbeddingOptions& layer, const at::TensorOptions& options) {
  // Zero rows: LibTorch's constructor then initialises (and pads) nothing.
  auto embedding = std::make_shared<torch::nn::EmbeddingImpl>(torch::nn::EmbeddingOptions(0, layer.embedding_dim()));
  embedding->options = layer;
  detail::replace_tensor(*embedding, "weight", at::empty({layer.num_embeddings(), layer.embedding_dim()}, options));
  return torch::nn::Embedding(embedding);
}

}  // namespace peft
