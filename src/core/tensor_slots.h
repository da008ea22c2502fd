#pragma once

// Creating adapter layers without wasted work, and swapping tensors into existing parameter slots.
//
// LibTorch's layer constructors allocate and initialise their weights. Adapter weights are often
// initialised differently (or live on the meta device, or get loaded right away), so the shells made here
// are built with zero-sized weights and then given tensors of the right shape, uninitialised.

#include <functional>
#include <string>
#include <unordered_map>

#include <ATen/core/Tensor.h>
#include <torch/nn/modules/linear.h>

namespace peft::detail {

/// Puts `tensor` into `owner`'s parameter (or buffer) slot `name`, and into the member LibTorch's layer
/// classes keep beside it (LinearImpl::weight, ...). The new tensor gets the old one's requires_grad.
void replace_tensor(torch::nn::Module& owner, const std::string& name, at::Tensor tensor, bool is_buffer = false);

/// Replaces tensors slot by slot so that a tensor registered in several slots (an adapter's shared tensor, like
/// VeRA's vera_A in every adapted layer) gets one replacement, which all its slots then share.
class SharedReplacements {
 public:
  using Make = std::function<at::Tensor(const at::Tensor& current)>;
  /// Puts into `owner`'s slot `name` the replacement of the tensor now there: `make(current)` the first time that
  /// tensor is met, the same result for every later slot holding it. A result that is `current` itself changes
  /// nothing.
  void replace(torch::nn::Module& owner, const std::string& name, bool is_buffer, const Make& make);

 private:
  // (current, replacement) by current's TensorImpl; holding `current` keeps its address from being reused.
  std::unordered_map<const c10::TensorImpl*, std::pair<at::Tensor, at::Tensor>> done_;
};

/// torch::nn::Linear(in, out, bias) with uninitialised parameters allocated with `options` (meta allowed).
std::shared_ptr<torch::nn::LinearImpl> make_linear(int64_t in, int64_t out, bool bias, const at::TensorOptions& options);

/// LibTorch's (and PyTorch's) default Linear initialisation: kaiming_uniform(a=sqrt(5)) for the weight,
/// uniform(+-1/sqrt(fan_in)) for the bias. Works for conv weights too (fan_in from dims 1..).
void default_init(const at::Tensor& weight, const at::Tensor& bias);

/// kaiming_uniform(a=sqrt(5)), PyTorch's default weight init (without the bias), in place.
void kaiming_default(const at::Tensor& tensor);

bool is_meta(const at::Tensor& tensor);

}  // namespace peft::detail
