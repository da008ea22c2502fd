#include "tuners/common/layer_copy.h"

#include <ATen/ops/empty.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "core/module_access.h"
#include "core/tensor_slots.h"
#include "routing/router.h"

namespace peft::detail {
namespace {

// ConvNdImpl keeps its options as detail::ConvNdOptions, which the ConvXdImpl constructors do not take.
template <size_t D>
torch::nn::ConvOptions<D> conv_options(const torch::nn::detail::ConvNdOptions<D>& o) {
  return torch::nn::ConvOptions<D>(o.in_channels(), o.out_channels(), o.kernel_size())
      .stride(o.stride())
      .padding(o.padding())
      .dilation(o.dilation())
      .groups(o.groups())
      .bias(o.bias())
      .padding_mode(o.padding_mode());
}
template <class Options>
const Options& layer_options(const Options& o) {
  return o;
}
template <size_t D>
torch::nn::ConvOptions<D> layer_options(const torch::nn::detail::ConvNdOptions<D>& o) {
  return conv_options(o);
}

// Built from the options instead of clone(), which would refuse a layer that already carries adapter
// containers.
template <class Impl>
std::shared_ptr<torch::nn::Module> copy_of(const torch::nn::Module& module) {
  const auto& source = dynamic_cast<const Impl&>(module);
  auto copy = std::make_shared<Impl>(layer_options(source.options));
  at::NoGradGuard no_grad;
  for (const auto& param : parameters_of(source)) {
    const at::Tensor& t = param.value();
    if (t.defined()) replace_tensor(*copy, param.key(), t.device().is_meta() ? at::empty(t.sizes(), t.options()) : t.clone());
  }
  for (const auto& buffer : buffers_of(source)) {
    const at::Tensor& t = buffer.value();
    if (t.defined()) replace_tensor(*copy, buffer.key(), t.device().is_meta() ? at::empty(t.sizes(), t.options()) : t.clone(), true);
  }
  copy->train(source.is_training());
  return copy;
}

}  // namespace

at::Tensor forward_layer_copy(LayerKind kind, torch::nn::Module& copy, const at::Tensor& x) {
  return with_layer_type(kind, [&](auto* type) {
    using Layer = std::remove_pointer_t<decltype(type)>;
    return original_forward(dynamic_cast<Layer&>(copy), x);
  });
}

std::shared_ptr<torch::nn::Module> copy_layer(const BaseLayer& base) {
  if (base.kind == LayerKind::LinearLike) return nullptr;
  return with_layer_type(base.kind, [&](auto* type) {
    using Layer = std::remove_pointer_t<decltype(type)>;
    return copy_of<Layer>(*base.module);
  });
}

}  // namespace peft::detail
