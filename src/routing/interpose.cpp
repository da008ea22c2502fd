// Definitions of LibTorch's layer forwards that take precedence over LibTorch's own.
//
// A model written with torch::nn::Linear (or Embedding, Conv1d/2d/3d, LayerNorm) calls
// torch::nn::LinearImpl::forward through the dynamic linker, which binds the first definition in its
// search order. Linked before LibTorch, this library provides that definition: it hands layers that carry
// adapters to them and passes every other call on to LibTorch's implementation (router.cpp). Injection
// checks that the caller's calls really arrive here (routing_check.cpp) and fails loudly if not.

#include "routing/router.h"

namespace torch::nn {

at::Tensor LinearImpl::forward(const at::Tensor& input) { return peft::detail::route(*this, input); }
at::Tensor EmbeddingImpl::forward(const at::Tensor& input) { return peft::detail::route(*this, input); }
at::Tensor Conv1dImpl::forward(const at::Tensor& input) { return peft::detail::route(*this, input); }
at::Tensor Conv2dImpl::forward(const at::Tensor& input) { return peft::detail::route(*this, input); }
at::Tensor Conv3dImpl::forward(const at::Tensor& input) { return peft::detail::route(*this, input); }
at::Tensor LayerNormImpl::forward(const at::Tensor& input) { return peft::detail::route(*this, input); }

}  // namespace torch::nn
