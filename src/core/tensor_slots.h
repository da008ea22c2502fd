#pragma once

// Creating adapter layers without wasted work, and swapping tensors into existing parameter slots.
//
// LibTorch's layer constructors allocate and initialise their weights. Adapter weights are often
// initialised differently (or live on the meta device, or get loaded right away), so the shells made here
// are built with zero-sized weights and then given tensors of the right shape, uninitialised.

#include <string>

#include <ATen/core/Tensor.h>
#include <torch/nn/modules/linear.h>

namespace peft::detail {

/// Puts `tensor` into `owner`'s parameter (or buffer) slot `name`, and into the member LibTorch's layer
/// classes keep beside it (LinearImpl::weight, ...). The new tensor gets the old one's requires_grad.
void replace_tensor(torch::nn::Module& owner, const std::string& name, at::Tensor tensor, bool is_buffer = false);

/// torch::nn::Linear(in, out, bias) with uninitialised parameters allocated with `options` (meta allowed).
std::shared_ptr<torch::nn::LinearImpl> make_linear(int64_t in, int64_t out, bool bias, const at::TensorOptions& options);

/// LibTorch's (and PyTorch's) default Linear initialisation: kaiming_uniform(a=sqrt(5)) for the weight,
/// uniform(+-1/sqrt(fan_in)) for the bias. Works for conv weights too (fan_in from dims 1..).
void default_init(const at::Tensor& weight, const at::Tensor& bias);

/// kaiming_uniform(a=sqrt(5)), PyTorch's default weight init (without the bias), in place.
void kaiming_default(const at::Tensor& tensor);

bool is_meta(const at::Tensor& tensor);

}  // namespace peft::detail
