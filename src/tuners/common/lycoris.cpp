#include "tuners/common/lycoris.h"

#include <cmath>

#include <ATen/ops/linear.h>
#include <ATen/ops/rand.h>
#include <torch/nn/init.h>

#include <peft/error.h>

#include "tuners/common/conv_functional.h"

namespace peft::detail {

at::Tensor LycorisLayer::forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                                        BaseForward base_forward) {
  const c10::ScalarType previous_dtype = x.scalar_type();
  at::Tensor result = base_forward(x);
  const bool training = base.is_training();
  for (const auto& r : active) {
    const auto& record = static_cast<const LycorisRecord&>(*r);
    // Module dropout skips the whole adapter in a training step.
    if (training && record.module_dropout > 0 && at::rand({1}).item<double>() <= record.module_dropout) continue;
    at::Tensor delta = delta_weight(record);
    if (training && record.rank_dropout > 0) {
      std::vector<int64_t> shape(delta.dim(), 1);
      shape[0] = -1;
      at::Tensor keep = (at::rand({delta.size(0)}) > record.rank_dropout).to(delta.scalar_type());
      if (record.rank_dropout_scale) keep = keep / keep.mean();
      delta = delta * keep.view(shape).to(delta.device());
    }
    const at::Tensor input = x.scalar_type() == delta.scalar_type() ? x : x.to(delta.scalar_type());
    result = result + (base_layer().is_conv() ? conv_like(base, kind(), input, delta) : at::linear(input, delta));
  }
  return result.scalar_type() == previous_dtype ? result : result.to(previous_dtype);
}

void LycorisSettings::fill(LycorisRecord& record, const std::string& module_name) const {
  record.r = ranks_.lookup(module_name, r_);
  record.alpha = alphas_.lookup(module_name, alpha_);
  positive()("r", record.r);
  record.scaling = record.alpha / static_cast<double>(record.r);
  record.rank_dropout = rank_dropout_;
  record.module_dropout = module_dropout_;
}

}  // namespace peft::detail
