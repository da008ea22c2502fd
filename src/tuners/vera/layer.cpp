// VeRA (Python PEFT's tuners/vera): y = W x + lambda_b * (B[:out] (lambda_d * (A[:, :in] dropout(x)))), where A
// (r x max_in) and B (max_out x r) are frozen random projections one adapter shares between all its layers, and
// lambda_b (out) / lambda_d (r) are the layer's trained vectors.

#include <algorithm>
#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/randn.h>

#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/common/shared_basis_layer.h"
#include "tuners/vera/layer.h"

namespace peft::detail::vera {
namespace {

class VeraLayer final : public SharedBasisLayer {
 public:
  static constexpr Index LAMBDA_B = FIRST, LAMBDA_D = SECOND;

  VeraLayer(const LayerRequest& request, const Method& method)
      : SharedBasisLayer(request, method, "vera", "vera_lambda_b", "vera_lambda_d", /*restore_result_dtype=*/true) {}

 protected:
  c10::ScalarType compute_dtype(const std::string& adapter, const c10::Device&) const override {
    return param(LAMBDA_D, adapter).scalar_type();
  }

  at::Tensor adapter_output(const CastInputRecord& record, const at::Tensor& input, bool) const override {
    const at::Tensor& lambda_b = param(LAMBDA_B, record.name);
    const at::Tensor& lambda_d = param(LAMBDA_D, record.name);
    const auto [a, b] = slices(record.name, lambda_d.options().device(input.device()));
    return lambda_b * at::linear(lambda_d * at::linear(input, a), b);
  }

  at::Tensor delta_weight(const AdapterRecord& record) const override {
    at::Tensor lambda_b = param(LAMBDA_B, record.name), lambda_d = param(LAMBDA_D, record.name);
    const c10::ScalarType dtype = param(B, record.name).scalar_type();
    // Half-precision matmuls are slow (or missing) on CPU: Python computes the update in float32 there.
    const bool to_float = param(B, record.name).device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
    at::TensorOptions options = lambda_d.options();
    if (to_float) {
      lambda_b = lambda_b.to(at::kFloat);
      lambda_d = lambda_d.to(at::kFloat);
      options = options.dtype(at::kFloat);
    }
    const auto [a, b] = slices(record.name, options);
    at::Tensor delta = at::mm(lambda_b.unsqueeze(-1) * b, lambda_d.unsqueeze(-1) * a);
    if (base_layer().fan_in_fan_out) delta = delta.t();
    return to_float ? delta.to(dtype) : delta;
  }

 private:
  /// The layer's parts of the shared projections: A[:, :in] and B[:out, :].
  std::pair<at::Tensor, at::Tensor> slices(const std::string& adapter, const at::TensorOptions& options) const {
    const at::Tensor a = param(A, adapter).narrow(1, 0, base_layer().in_features);
    const at::Tensor b = param(B, adapter).narrow(0, 0, base_layer().out_features);
    return {a.to(options), b.to(options)};
  }
};

/// Python's _kaiming_init: kaiming-uniform (gain sqrt(2), fan_in) of a new float32 (rows, cols) CPU tensor, drawn
/// from `generator`.
at::Tensor kaiming_uniform(int64_t rows, int64_t cols, at::Generator& generator) {
  const double std = std::sqrt(2.0) / std::sqrt(static_cast<double>(cols));
  const double bound = std::sqrt(3.0) * std;
  at::Tensor tensor = at::empty({rows, cols}, at::TensorOptions().dtype(at::kFloat));
  tensor.uniform_(-bound, bound, generator);
  return tensor;
}

class VeraBuilder final : public BuilderOf<VeraConfig> {
 public:
  using BuilderOf::BuilderOf;

  // The projections are sized by the largest targeted layer and made once, before any layer: every layer of the
  // adapter registers these same two tensors.
  void plan(const std::vector<LayerRequest>& requests) override {
    if (requests.empty()) return;
    const SharedBasisPlan plan = plan_shared_bases(requests, config_.save_projection());
    const int64_t r = config_.r(), in = plan.in_features, out = plan.out_features;
    if (!plan.materialise) {
      a_ = at::empty({r, in}, plan.options);
      b_ = at::empty({out, r}, plan.options);
      return;
    }
    // Python: torch.Generator().manual_seed(projection_prng_key), vera_A drawn first, then vera_B.
    at::Generator generator = at::detail::createCPUGenerator(static_cast<uint64_t>(config_.projection_prng_key()));
    a_ = kaiming_uniform(r, in, generator).to(plan.options);
    b_ = kaiming_uniform(out, r, generator).to(plan.options);
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    auto record = std::make_shared<SharedBasisRecord>(request.adapter_name);
    record->dropout = config_.vera_dropout();

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor lambda_b = at::empty({base.out_features}, options);
    at::Tensor lambda_d = at::empty({config_.r()}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      // Python's order of draws: lambda_b = ones, lambda_d = randn (float32 CPU, default generator), then the
      // init_weights values over them.
      lambda_b.fill_(1.0);
      lambda_d.copy_(at::randn({config_.r()}, at::TensorOptions().dtype(at::kFloat)));
      if (config_.init_weights()) {
        lambda_d.fill_(config_.d_initial());
        lambda_b.zero_();
      }
    }
    return prepare_dict_adapter<VeraLayer>(
        request, method_,
        {record, {{VeraLayer::LAMBDA_B, lambda_b}, {VeraLayer::LAMBDA_D, lambda_d}, {VeraLayer::A, a_}, {VeraLayer::B, b_}}, {}});
  }

 private:
  at::Tensor a_, b_;  // the adapter's shared projections
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, VeraConfig& config) {
  return std::make_unique<VeraBuilder>(method, config);
}

}  // namespace peft::detail::vera
