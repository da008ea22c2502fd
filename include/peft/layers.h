#pragma once

// The layers whose calls reach their adapters, and how a model's own layer types join them.
//
// Calls of unmodified torch::nn::Linear, Embedding, Conv1d/2d/3d and LayerNorm layers reach their adapters
// when libpeft_interpose is loaded ahead of LibTorch (CMake target peft::peft on Linux; see README, "How
// calls reach the adapters"). Without it (peft::core only, other platforms, PEFT_INTERPOSE=OFF), build the
// model from the drop-in types below: each is the LibTorch layer with a forward that consults the adapters
// first. They print, save, load and clone exactly like the LibTorch layers. Functional calls
// (torch::linear(x, layer->weight, ...)) never reach adapters: they do not go through a layer's forward.

#include <c10/util/C++17.h>  // FunctionRef.h uses c10::invoke_result_t without including it
#include <c10/util/FunctionRef.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <peft/export.h>

/// The LibTorch layer types peft-cpp routes: X(Name) stands for torch::nn::NameImpl. The one list every
/// part of peft-cpp that handles layer types is generated from.
#define PEFT_ROUTED_LAYERS(X) X(Linear) X(Embedding) X(Conv1d) X(Conv2d) X(Conv3d) X(LayerNorm)

namespace peft {

/// Whether calls of unmodified torch::nn layers reach their adapters in this process (libpeft_interpose is
/// loaded and comes before LibTorch in the dynamic linker's search order). Injection checks this itself
/// and throws RoutingError for layers it could not reach; this function is for programs that want to ask.
PEFT_API bool routes_torch_layers();

// Drop-in layers: torch::nn::XImpl with a forward that reaches the adapters. clone() keeps the drop-in type,
// and refuses (peft::Error) a layer that carries adapters: inject into the clone instead.
#define PEFT_DROP_IN_LAYER(Name)                                                                      \
  class PEFT_API Name##Impl : public torch::nn::Name##Impl {                                          \
   public:                                                                                            \
    using torch::nn::Name##Impl::Name##Impl;                                                          \
    /** The drop-in form of a LibTorch layer (shares its tensors). */                                 \
    explicit Name##Impl(const torch::nn::Name##Impl& layer)                                           \
        : torch::nn::Module(layer), torch::nn::Name##Impl(layer) {}                                   \
    at::Tensor forward(const at::Tensor& input);                                                      \
    std::shared_ptr<torch::nn::Module> clone(const c10::optional<c10::Device>& device = c10::nullopt) \
        const override;                                                                               \
  };                                                                                                  \
  TORCH_MODULE(Name);
PEFT_ROUTED_LAYERS(PEFT_DROP_IN_LAYER)
#undef PEFT_DROP_IN_LAYER

/// The extension point for your own layer types. A layer that computes a linear map y = x W^T + b (or
/// x W + b when its weight is stored transposed, like GPT-2's Conv1D) implements this interface and
/// calls forward_through_adapters from its forward; adapters can then target it like a torch::nn::Linear.
///
///   struct Conv1DImpl : torch::nn::Module, peft::LinearLike {
///     at::Tensor weight, bias;                           // weight: (in, out)
///     at::Tensor linear_weight() const override { return weight; }
///     at::Tensor linear_bias() const override { return bias; }
///     bool weight_is_transposed() const override { return true; }
///     at::Tensor forward(const at::Tensor& x) {
///       return peft::forward_through_adapters(*this, x, [&](const at::Tensor& in) { return at::matmul(in, weight) + bias; });
///     }
///   };
class PEFT_API LinearLike {
 public:
  virtual ~LinearLike() = default;
  /// The weight as stored: (out_features, in_features), or (in, out) when weight_is_transposed().
  virtual at::Tensor linear_weight() const = 0;
  /// The bias (out_features), or an undefined tensor.
  virtual at::Tensor linear_bias() const { return {}; }
  virtual bool weight_is_transposed() const { return false; }
};

/// Runs `base_forward` and the layer's active adapters. Call it from the forward of a LinearLike layer.
PEFT_API at::Tensor forward_through_adapters(torch::nn::Module& layer, const at::Tensor& input,
                                             c10::function_ref<at::Tensor(const at::Tensor&)> base_forward);

/// Layers whose tensors are allocated with `options` but not initialised, the way to build a large base
/// model without paying for LibTorch's initialisation: on the meta device nothing is allocated at all (load
/// the real weights later, e.g. with peft::assign_tensors), on the CPU the pages stay untouched until written.
PEFT_API torch::nn::Linear empty_linear(const torch::nn::LinearOptions& layer, const at::TensorOptions& options = {});
PEFT_API torch::nn::Embedding empty_embedding(const torch::nn::EmbeddingOptions& layer,
                                              const at::TensorOptions& options = {});

/// Puts each tensor of `tensors` into `module`'s parameter or buffer of that name, adopting it (no copy, no
/// shape or device constraint from the old tensor): how a model built on the meta device gets its weights.
/// Every name must exist in the module and every shape must match the one it replaces; nothing is changed
/// otherwise (peft::StateDictError names each problem).
PEFT_API void assign_tensors(torch::nn::Module& module, const torch::OrderedDict<std::string, at::Tensor>& tensors);

}  // namespace peft
