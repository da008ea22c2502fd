#include "tuners/common/shared_basis_layer.h"

#include <algorithm>
#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/empty.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/randn.h>

#include "tuners/common/pending_adapter.h"

namespace peft::detail {

SharedBasisLayer::SharedBasisLayer(const LayerRequest& request, const Method& method, const std::string& prefix,
                                   const std::string& first, const std::string& second, bool restore_result_dtype)
    : CastInputLayer(request, method,
                     {{first},
                      {second},
                      // Frozen, shared with the adapter's other layers (Method::shares).
                      {prefix + "_A", false, true, /*holds_buffers=*/true},
                      {prefix + "_B", false, true, /*holds_buffers=*/true}},
                     restore_result_dtype) {}

std::pair<at::Tensor, at::Tensor> SharedBasisLayer::slices(const std::string& adapter,
                                                          const at::TensorOptions& options) const {
  const at::Tensor a = param(A, adapter).narrow(1, 0, base_layer().in_features);
  const at::Tensor b = param(B, adapter).narrow(0, 0, base_layer().out_features);
  return {a.to(options), b.to(options)};
}

at::Tensor SharedBasisLayer::scaled_basis_delta(const std::string& adapter, at::Tensor lambda_b,
                                                at::Tensor lambda_d) const {
  const c10::ScalarType dtype = param(B, adapter).scalar_type();
  // Half-precision matmuls are slow (or missing) on CPU: Python computes the update in float32 there.
  const bool to_float = param(B, adapter).device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
  at::TensorOptions options = lambda_d.options();
  if (to_float) {
    lambda_b = lambda_b.to(at::kFloat);
    lambda_d = lambda_d.to(at::kFloat);
    options = options.dtype(at::kFloat);
  }
  const auto [a, b] = slices(adapter, options);
  at::Tensor delta = at::mm(lambda_b.unsqueeze(-1) * b, lambda_d.unsqueeze(-1) * a.narrow(0, 0, lambda_d.size(0)));
  if (base_layer().fan_in_fan_out) delta = delta.t();
  return to_float ? delta.to(dtype) : delta;
}

namespace {

/// Kaiming-uniform (gain sqrt(2), fan_in) of a new float32 (rows, cols) CPU tensor, drawn from `generator`.
at::Tensor kaiming_uniform(int64_t rows, int64_t cols, at::Generator& generator) {
  const double std = std::sqrt(2.0) / std::sqrt(static_cast<double>(cols));
  const double bound = std::sqrt(3.0) * std;
  at::Tensor tensor = at::empty({rows, cols}, at::TensorOptions().dtype(at::kFloat));
  tensor.uniform_(-bound, bound, generator);
  return tensor;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> kaiming_bases(const SharedBasisPlan& plan, int64_t a_rows, int64_t b_cols,
                                                int64_t key) {
  if (!plan.materialise) {
    return {at::empty({a_rows, plan.in_features}, plan.options), at::empty({plan.out_features, b_cols}, plan.options)};
  }
  at::Generator generator = at::detail::createCPUGenerator(static_cast<uint64_t>(key));
  at::Tensor a = kaiming_uniform(a_rows, plan.in_features, generator).to(plan.options);
  at::Tensor b = kaiming_uniform(plan.out_features, b_cols, generator).to(plan.options);
  return {a, b};
}

std::pair<at::Tensor, at::Tensor> scaling_vectors(const at::TensorOptions& options, int64_t out, int64_t d_size,
                                                  bool init_weights, double d_initial) {
  at::Tensor lambda_b = at::empty({out}, options);
  at::Tensor lambda_d = at::empty({d_size}, options);
  if (materialised(options)) {
    at::NoGradGuard no_grad;
    // Python's order of draws: lambda_b = ones, lambda_d = randn (float32 CPU, default generator), then the
    // init_weights values over them.
    lambda_b.fill_(1.0);
    lambda_d.copy_(at::randn({d_size}, at::TensorOptions().dtype(at::kFloat)));
    if (init_weights) {
      lambda_d.fill_(d_initial);
      lambda_b.zero_();
    }
  }
  return {lambda_b, lambda_d};
}

SharedBasisPlan plan_shared_bases(const std::vector<LayerRequest>& requests, bool save_projection) {
  SharedBasisPlan plan;
  for (const LayerRequest& request : requests) {
    plan.in_features = std::max(plan.in_features, request.base.in_features);
    plan.out_features = std::max(plan.out_features, request.base.out_features);
  }
  // Loaded from the checkpoint when it holds them; otherwise they must have their values now.
  const bool loaded = requests.front().low_cpu_mem_usage && save_projection;
  plan.options = adapter_options(requests.front().base, loaded);
  plan.materialise = materialised(plan.options);
  return plan;
}

}  // namespace peft::detail
