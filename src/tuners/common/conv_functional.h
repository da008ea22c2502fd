#pragma once

// Convolving with another weight (an adapter's delta) using the base layer's geometry, as Python PEFT's
// F.conv{1,2}d(x, delta, stride=base.stride, padding=base.padding, dilation=..., groups=...).

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "core/layer_kinds.h"

namespace peft::detail {

at::Tensor conv_like(const torch::nn::Module& base, LayerKind kind, const at::Tensor& input, const at::Tensor& weight);

/// The base conv's kernel size, groups, in/out channels.
struct ConvGeometry {
  std::vector<int64_t> kernel;
  int64_t groups = 1;
  int64_t in_channels = 0;
  int64_t out_channels = 0;
};
ConvGeometry conv_geometry(const torch::nn::Module& base, LayerKind kind);

}  // namespace peft::detail
