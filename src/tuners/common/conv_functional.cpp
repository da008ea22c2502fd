#include "tuners/common/conv_functional.h"

#include <ATen/ops/conv1d.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/conv3d.h>
#include <torch/nn/modules/conv.h>

#include "core/compat.h"

namespace peft::detail {
namespace {

template <size_t D, class Impl>
at::Tensor conv_with(const Impl& conv, const at::Tensor& x, const at::Tensor& weight) {
  const auto& o = conv.options;
  auto call = [&](auto padding) {
    if constexpr (D == 1) return at::conv1d(x, weight, {}, *o.stride(), padding, *o.dilation(), o.groups());
    if constexpr (D == 2) return at::conv2d(x, weight, {}, *o.stride(), padding, *o.dilation(), o.groups());
    if constexpr (D == 3) return at::conv3d(x, weight, {}, *o.stride(), padding, *o.dilation(), o.groups());
  };
  if (const auto* explicit_padding = variant_get_if<torch::ExpandingArray<D>>(o.padding())) {
    return call(at::IntArrayRef(**explicit_padding));
  }
  return call(c10::string_view(variant_get_if<torch::enumtype::kSame>(o.padding()) ? "same" : "valid"));
}

template <class Impl>
ConvGeometry geometry_of(const Impl& conv) {
  const auto& o = conv.options;
  return {std::vector<int64_t>(o.kernel_size()->begin(), o.kernel_size()->end()), o.groups(), o.in_channels(),
          o.out_channels()};
}

}  // namespace

at::Tensor conv_like(const torch::nn::Module& base, LayerKind kind, const at::Tensor& input, const at::Tensor& weight) {
  switch (kind) {
    case LayerKind::Conv1d: return conv_with<1>(dynamic_cast<const torch::nn::Conv1dImpl&>(base), input, weight);
    case LayerKind::Conv2d: return conv_with<2>(dynamic_cast<const torch::nn::Conv2dImpl&>(base), input, weight);
    default: return conv_with<3>(dynamic_cast<const torch::nn::Conv3dImpl&>(base), input, weight);
  }
}

ConvGeometry conv_geometry(const torch::nn::Module& base, LayerKind kind) {
  switch (kind) {
    case LayerKind::Conv1d: return geometry_of(dynamic_cast<const torch::nn::Conv1dImpl&>(base));
    case LayerKind::Conv2d: return geometry_of(dynamic_cast<const torch::nn::Conv2dImpl&>(base));
    default: return geometry_of(dynamic_cast<const torch::nn::Conv3dImpl&>(base));
  }
}

}  // namespace peft::detail
