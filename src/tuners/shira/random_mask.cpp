// Python PEFT's shira/mask_functions.py random_mask, the mask of mask_type "random".

#include <algorithm>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/zeros.h>

#include <peft/error.h>
#include <peft/tuners/shira/config.h>

#include "core/layer_kinds.h"

namespace peft {

at::Tensor shira_random_mask(const torch::nn::Module& base_layer, int64_t r, std::optional<int64_t> random_seed) {
  const std::optional<detail::BaseLayer> base = detail::describe_layer(const_cast<torch::nn::Module&>(base_layer));
  if (!base || base->kind != detail::LayerKind::Linear) {
    throw UnsupportedLayerError("shira_random_mask: " + detail::short_repr(base_layer) +
                                " is not a `torch::nn::Linear`.");
  }
  const int64_t out = base->out_features, in = base->in_features;
  // A fresh CPU generator, as Python's torch.Generator(): its default seed unless one is given.
  at::Generator generator = random_seed ? at::detail::createCPUGenerator(static_cast<uint64_t>(*random_seed))
                                        : at::detail::createCPUGenerator();
  const at::Tensor picked = at::randperm(out * in, generator, at::TensorOptions().dtype(at::kLong))
                                .narrow(0, 0, std::min(r * (out + in), out * in));
  at::Tensor mask = at::zeros({out * in}, at::TensorOptions().dtype(at::kBool));
  mask.index_fill_(0, picked, true);
  const at::Device device = base->weight().device();
  return mask.view({out, in}).to(device.is_meta() ? at::Device(at::kCPU) : device);
}

}  // namespace peft
