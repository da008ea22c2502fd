// RandLoRA (Python PEFT's tuners/randlora): y = W x + scaling * second(first(dropout(x))), where the two factors
// come from the frozen random bases one adapter shares between all its layers, randlora_A (r x 1 x min_dim) and
// randlora_B (max_dim x num_bases x r), and the layer's trained randlora_lambda (r x num_bases) and randlora_gamma
// (num_bases x min(in, out)): the scaled small basis lambda[:, :, None] * A * gamma[None] is applied on the layer's
// smaller side, the large basis B on the other.

#include <algorithm>
#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>

#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/common/shared_basis_layer.h"
#include "tuners/randlora/layer.h"

namespace peft::detail::randlora {
namespace {

/// Python's num_bases: enough bases of rank r for a full-rank update of the smaller side.
int64_t bases_for(int64_t min_dim, int64_t r) { return (min_dim + r - 1) / r; }

/// Half-precision matmuls are slow or missing on CPU: Python uses such bases in float32 there.
bool half_on_cpu(c10::ScalarType dtype, const c10::Device& device) {
  return device.is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
}

class RandLoraLayer final : public SharedBasisLayer {
 public:
  static constexpr Index LAMBDA = FIRST, GAMMA = SECOND;

  RandLoraLayer(const LayerRequest& request, const Method& method)
      : SharedBasisLayer(request, method, "randlora", "randlora_lambda", "randlora_gamma",
                         /*restore_result_dtype=*/false) {}

 protected:
  // The dtype of the factor scaled_bases applies first.
  c10::ScalarType compute_dtype(const std::string& adapter, const c10::Device& device) const override {
    const c10::ScalarType b = param(B, adapter).scalar_type();
    if (half_on_cpu(b, device)) return at::kFloat;
    if (base_layer().in_features > base_layer().out_features) return b;  // then the B basis comes first
    return c10::promoteTypes(c10::promoteTypes(param(LAMBDA, adapter).scalar_type(), param(A, adapter).scalar_type()),
                             param(GAMMA, adapter).scalar_type());
  }

  at::Tensor adapter_output(const CastInputRecord& record, const at::Tensor& input, bool) const override {
    const auto [first, second] = scaled_bases(record.name, input.device());
    return at::linear(at::linear(input, first), second) * static_cast<const SharedBasisRecord&>(record).scaling;
  }

  at::Tensor delta_weight(const AdapterRecord& r) const override {
    const auto& record = static_cast<const SharedBasisRecord&>(r);
    const auto [first, second] = scaled_bases(record.name, param(B, record.name).device());
    at::Tensor delta = at::mm(second, first);
    if (base_layer().fan_in_fan_out) delta = delta.t();
    return delta * record.scaling;
  }

 private:
  /// The two factors of the update, first applied first: (scaled A basis, B basis) when the input is the
  /// smaller side, else (B basis^T, scaled A basis^T). Half-precision bases on CPU are used in float32, as Python
  /// does (slow or missing half matmuls there).
  std::pair<at::Tensor, at::Tensor> scaled_bases(const std::string& adapter, const c10::Device& device) const {
    at::Tensor a = param(A, adapter), b = param(B, adapter);
    at::Tensor lambda = param(LAMBDA, adapter).to(device), gamma = param(GAMMA, adapter).to(device);
    if (half_on_cpu(b.scalar_type(), device)) {
      a = a.to(at::kFloat), b = b.to(at::kFloat), lambda = lambda.to(at::kFloat), gamma = gamma.to(at::kFloat);
    }
    const int64_t in = base_layer().in_features, out = base_layer().out_features;
    const int64_t min_dim = std::min(in, out), max_dim = std::max(in, out);
    const int64_t bases = lambda.size(1);
    const at::Tensor sliced_a = a.narrow(1, 0, std::min(bases, a.size(1))).narrow(2, 0, min_dim).to(device);
    const at::Tensor sliced_b = b.narrow(0, 0, max_dim).narrow(1, 0, std::min(bases, b.size(1))).to(device);
    const at::Tensor update_b = sliced_b.flatten(1);
    const at::Tensor update_a = (lambda.unsqueeze(-1) * sliced_a * gamma.unsqueeze(0)).flatten(0, 1);
    if (min_dim == in) return {update_a, update_b};
    return {update_b.t(), update_a.t()};
  }
};

/// Python's _kaiming_init: kaiming-uniform (a = sqrt(5), fan_in) of a new `dtype` CPU tensor, drawn from `generator`.
at::Tensor kaiming_uniform(at::IntArrayRef shape, c10::ScalarType dtype, at::Generator& generator) {
  int64_t fan_in = shape[1];
  for (size_t i = 2; i < shape.size(); ++i) fan_in *= shape[i];
  const double a = std::sqrt(5.0);
  const double gain = std::sqrt(2.0 / (1 + a * a));
  const double bound = std::sqrt(3.0) * (gain / std::sqrt(static_cast<double>(fan_in)));
  at::Tensor tensor = at::empty(shape, at::TensorOptions().dtype(dtype));
  tensor.uniform_(-bound, bound, generator);
  return tensor;
}

/// Python's ternary sparse bases: -1 below 1 / (2 sparsity), 1 above 1 - 1 / (2 sparsity), else 0.
at::Tensor ternary(const at::Tensor& uniform, double sparsity) {
  at::Tensor out = at::zeros(uniform.sizes(), at::TensorOptions().dtype(at::kFloat));
  out.masked_fill_(uniform < 1 / (2 * sparsity), -1);
  out.masked_fill_(uniform > 1 - 1 / (2 * sparsity), 1);
  return out;
}

class RandLoraBuilder final : public BuilderOf<RandLoraConfig> {
 public:
  using BuilderOf::BuilderOf;

  // The bases are sized by the largest targeted layer and made once, before any layer: every layer of the adapter
  // registers these same two tensors.
  void plan(const std::vector<LayerRequest>& requests) override {
    if (requests.empty()) return;
    const SharedBasisPlan plan = plan_shared_bases(requests, config_.save_projection());
    const at::TensorOptions& options = plan.options;
    const int64_t r = config_.r();
    const int64_t max_dim = std::max(plan.in_features, plan.out_features);
    const int64_t min_dim = std::min(plan.in_features, plan.out_features);
    const int64_t bases = bases_for(min_dim, r);
    if (!plan.materialise) {
      a_ = at::empty({r, 1, min_dim}, options);
      b_ = at::empty({max_dim, bases, r}, options);
      return;
    }
    // Python: torch.Generator().manual_seed(projection_prng_key), randlora_A drawn first, then randlora_B.
    at::NoGradGuard no_grad;
    at::Generator generator = at::detail::createCPUGenerator(static_cast<uint64_t>(config_.projection_prng_key()));
    at::Tensor a, b;
    if (config_.very_sparse() || config_.sparse()) {
      const double sparsity = config_.very_sparse() ? std::sqrt(static_cast<double>(min_dim)) : 3.0;
      const at::TensorOptions uniform = at::TensorOptions().dtype(at::kFloat);
      const at::Tensor ua = at::rand({r, 1, min_dim}, generator, uniform);
      const at::Tensor ub = at::rand({max_dim, bases, r}, generator, uniform);
      a = ternary(ua, sparsity);
      b = ternary(ub, sparsity);
    } else {
      // Python draws these in bfloat16 (accelerate's is_bf16_available() holds on CPU) before the layers cast
      // them to their dtype.
      a = kaiming_uniform({r, 1, min_dim}, at::kBFloat16, generator);
      std::vector<at::Tensor> chunks;
      for (int64_t i = 0; i < bases; ++i) chunks.push_back(kaiming_uniform({max_dim, 1, r}, at::kBFloat16, generator));
      b = at::cat(chunks, 1);
    }
    // Normalised by their standard deviation.
    a_ = (a / a.std()).to(options);
    b_ = (b / b.std()).to(options);
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    auto record = std::make_shared<SharedBasisRecord>(request.adapter_name);
    record->dropout = config_.randlora_dropout();
    record->scaling = static_cast<double>(config_.randlora_alpha()) / static_cast<double>(config_.r());

    const int64_t min_dim = std::min(base.in_features, base.out_features);
    const int64_t max_dim = std::max(base.in_features, base.out_features);
    const int64_t bases = bases_for(min_dim, config_.r());
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor lambda = at::empty({config_.r(), bases}, options);
    at::Tensor gamma = at::empty({bases, min_dim}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      // Python's values and order of draws (float32 CPU, default generator), then the init_weights values.
      const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat);
      lambda.copy_(at::randn({config_.r(), bases}, f32));
      gamma.copy_(at::ones({bases, min_dim}, f32) / max_dim);
      if (config_.init_weights()) {
        lambda.zero_();
        gamma.fill_(1.0 / static_cast<double>(std::max(bases, min_dim)));
      }
    }
    return prepare_dict_adapter<RandLoraLayer>(
        request, method_,
        {record,
         {{RandLoraLayer::LAMBDA, lambda}, {RandLoraLayer::GAMMA, gamma}, {RandLoraLayer::A, a_}, {RandLoraLayer::B, b_}},
         {}});
  }

 private:
  at::Tensor a_, b_;  // the adapter's shared bases
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, RandLoraConfig& config) {
  return std::make_unique<RandLoraBuilder>(method, config);
}

}  // namespace peft::detail::randlora
