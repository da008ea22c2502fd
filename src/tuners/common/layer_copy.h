#pragma once

// Independent copies of a routable layer and calling them without routing (for modules_to_save and LN
// tuning, which keep a trainable copy of the whole layer per adapter).

#include <memory>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "core/layer_kinds.h"

namespace peft::detail {

/// A fresh layer of the same type and options holding copies of the tensors (meta tensors stay meta);
/// nullptr for peft::LinearLike layers, whose type peft-cpp cannot construct.
std::shared_ptr<torch::nn::Module> copy_layer(const BaseLayer& base);

/// The copy's own forward (never routed to adapters).
at::Tensor forward_layer_copy(LayerKind kind, torch::nn::Module& copy, const at::Tensor& x);

}  // namespace peft::detail
