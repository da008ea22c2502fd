#include "core/tensor_slots.h"

#include <cmath>

#include <torch/nn/init.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>

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
  set_member<torch::nn::LinearImpl>(owner, name, tensor) || set_member<torch::nn::Conv1dImpl>(owner, name, tensor) ||
      set_member<torch::nn::Conv2dImpl>(owner, name, tensor) || set_member<torch::nn::Conv3dImpl>(owner, name, tensor) ||
      set_member<torch::nn::EmbeddingImpl>(owner, name, tensor) || set_member<torch::nn::LayerNormImpl>(owner, name, tensor);
}

std::shared_ptr<torch::nn::LinearImpl> make_linear(int64_t in, int64_t out, bool bias, const at::TensorOptions& options) {
  // (in=1, out=0) gives zero-element weights, so LibTorch's constructor allocates and initialises nothing.
  auto layer = std::make_shared<torch::nn::LinearImpl>(torch::nn::LinearOptions(1, 0).bias(bias));
  layer->options = torch::nn::LinearOptions(in, out).bias(bias);
  replace_tensor(*layer, "weight", at::empty({out, in}, options));
  if (bias) replace_tensor(*layer, "bias", at::empty({out}, options));
  return layer;
}

void default_init(const at::Tensor& weight, const at::Tensor& bias) {
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const int64_t fan_in = weight.numel() / weight.size(0);
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

}  // namespace peft::detail
