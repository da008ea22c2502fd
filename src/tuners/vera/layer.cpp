// VeRA (Python PEFT's tuners/vera): y = W x + lambda_b * (B[:out] (lambda_d * (A[:, :in] dropout(x)))), where A
// (r x max_in) and B (max_out x r) are frozen random projections one adapter shares between all its layers, and
// lambda_b (out) / lambda_d (r) are the layer's trained vectors.

#include <algorithm>
#include <tuple>

#include <ATen/ops/linear.h>

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
    return scaled_basis_delta(record.name, param(LAMBDA_B, record.name), param(LAMBDA_D, record.name));
  }
};

class VeraBuilder final : public BuilderOf<VeraConfig> {
 public:
  using BuilderOf::BuilderOf;

  // The projections are sized by the largest targeted layer and made once, before any layer: every layer of the
  // adapter registers these same two tensors.
  void plan(const std::vector<LayerRequest>& requests) override {
    if (requests.empty()) return;
    const SharedBasisPlan plan = plan_shared_bases(requests, config_.save_projection());
    // Python: torch.Generator().manual_seed(projection_prng_key), vera_A drawn first, then vera_B.
    std::tie(a_, b_) = kaiming_bases(plan, config_.r(), config_.r(), config_.projection_prng_key());
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    auto record = std::make_shared<SharedBasisRecord>(request.adapter_name);
    record->dropout = config_.vera_dropout();

    const auto [lambda_b, lambda_d] =
        scaling_vectors(adapter_options(base, request.low_cpu_mem_usage), base.out_features, config_.r(),
                        config_.init_weights(), config_.d_initial());
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
