#include "tuners/lora/task_merging.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/bernoulli.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <peft/error.h>

namespace peft::detail::lora {
namespace {

// The weights as a tensor shaped to scale the stacked tensors (Python's reshape_weight_task_tensors).
at::Tensor weights_for(const at::Tensor& stacked, const std::vector<double>& weights) {
  std::vector<int64_t> shape(stacked.dim(), 1);
  shape[0] = static_cast<int64_t>(weights.size());
  // Python builds torch.tensor(weights) (float32), then multiplies.
  return at::tensor(std::vector<float>(weights.begin(), weights.end()), stacked.options().dtype(at::kFloat))
      .view(shape);
}

at::Tensor magnitude_pruned(const at::Tensor& t, double density) {
  at::Tensor mask = at::zeros_like(t).reshape(-1);
  const int64_t k = static_cast<int64_t>(density * static_cast<double>(t.numel()));
  const at::Tensor top = std::get<1>(at::topk(t.abs().reshape(-1), k, -1, /*largest=*/true));
  mask.index_fill_(0, top, 1);
  return t * mask.reshape(t.sizes());
}

at::Tensor randomly_pruned(const at::Tensor& t, double density) {
  const at::Tensor mask = at::bernoulli(at::full_like(t, density));
  return t * mask / density;
}

// Python's prune: density >= 1 keeps everything (with a warning), below 0 is an error.
std::vector<at::Tensor> pruned(const std::vector<at::Tensor>& tensors, double density, bool random) {
  if (density >= 1) {
    TORCH_WARN("The density ", density, " is greater than or equal to 1, no pruning will be performed.");
    return tensors;
  }
  if (density < 0) throw ConfigError("Density should be >= 0, got " + std::to_string(density));
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : tensors) out.push_back(random ? randomly_pruned(t, density) : magnitude_pruned(t, density));
  return out;
}

at::Tensor majority_sign_mask(const at::Tensor& stacked, const std::string& method) {
  const at::Tensor sign = stacked.sign();
  at::Tensor magnitude;
  if (method == "total") {
    magnitude = stacked.sum(0);
  } else if (method == "frequency") {
    magnitude = sign.sum(0);
  } else {
    throw ConfigError("Unimplemented mask method \"" + method + "\"");
  }
  const at::Tensor majority = at::where(magnitude >= 0, at::ones_like(magnitude), -at::ones_like(magnitude));
  return sign == majority;
}

at::Tensor disjoint_merge(const at::Tensor& weighted, const at::Tensor& mask) {
  const at::Tensor mixed = (weighted * mask).sum(0);
  const at::Tensor preserved = mask.sum(0);
  return mixed / at::clamp(preserved, 1.0);
}

at::Tensor weighted_sum(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights) {
  const at::Tensor stacked = at::stack(tensors, 0);
  return (stacked * weights_for(stacked, weights)).sum(0);
}

at::Tensor ties_merge(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights,
                      const std::string& majority_sign_method) {
  const at::Tensor stacked = at::stack(tensors, 0);
  const at::Tensor mask = majority_sign_mask(stacked, majority_sign_method);
  return disjoint_merge(stacked * weights_for(stacked, weights), mask);
}

}  // namespace

at::Tensor task_arithmetic(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights) {
  return weighted_sum(tensors, weights);
}

at::Tensor magnitude_prune(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density) {
  return weighted_sum(pruned(tensors, density, false), weights);
}

at::Tensor ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density,
                const std::string& majority_sign_method) {
  return ties_merge(pruned(tensors, density, false), weights, majority_sign_method);
}

at::Tensor dare_linear(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density) {
  return weighted_sum(pruned(tensors, density, true), weights);
}

at::Tensor dare_ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density,
                     const std::string& majority_sign_method) {
  return ties_merge(pruned(tensors, density, true), weights, majority_sign_method);
}

}  // namespace peft::detail::lora
