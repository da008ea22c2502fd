// PVeRA (Python PEFT's tuners/pvera), VeRA with a sampled middle: h = lambda_d * (A[:, :in] dropout(x)) splits into
// a mean mu and a log-variance logvar (r each); z = mu in eval mode, mu + eps * exp(logvar / 2) (eps ~ N(0, 1)) in
// train mode or with sample_at_inference; y = W x + lambda_b * (B[:out] z). A (2r x max_in) and B (max_out x r) are
// frozen random projections one adapter shares between all its layers (SharedBasisLayer); lambda_b (out) and
// lambda_d (2r) are the layer's trained vectors. Merging uses the mean: only the first halves of lambda_d and A.

#include <optional>
#include <tuple>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randn_like.h>

#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/common/shared_basis_layer.h"
#include "tuners/pvera/layer.h"

namespace peft::detail::pvera {
namespace {

struct PveraRecord : SharedBasisRecord {
  using SharedBasisRecord::SharedBasisRecord;
  bool sample_at_inference = false;
  /// The layer's own CPU generator for the noise (Python's pvera_generator), seeded with generator_seed; unset:
  /// the default generator of the input's device.
  std::optional<at::Generator> generator;
};

class PveraLayer final : public SharedBasisLayer {
 public:
  static constexpr Index LAMBDA_B = FIRST, LAMBDA_D = SECOND;

  // Python's forward casts the sum back to the input's dtype only.
  PveraLayer(const LayerRequest& request, const Method& method)
      : SharedBasisLayer(request, method, "pvera", "pvera_lambda_b", "pvera_lambda_d", /*restore_result_dtype=*/false) {}

 protected:
  c10::ScalarType compute_dtype(const std::string& adapter, const c10::Device&) const override {
    return param(LAMBDA_D, adapter).scalar_type();
  }

  at::Tensor adapter_output(const CastInputRecord& base_record, const at::Tensor& input, bool training) const override {
    const auto& record = static_cast<const PveraRecord&>(base_record);
    const at::Tensor& lambda_b = param(LAMBDA_B, record.name);
    const at::Tensor& lambda_d = param(LAMBDA_D, record.name);
    const auto [a, b] = slices(record.name, lambda_d.options().device(input.device()));
    const std::vector<at::Tensor> halves = (lambda_d * at::linear(input, a)).chunk(2, -1);
    at::Tensor z = halves[0];
    if (training || record.sample_at_inference) z = z + noise(record, halves[1]) * at::exp(0.5 * halves[1]);
    return lambda_b * at::linear(z, b);
  }

  at::Tensor delta_weight(const AdapterRecord& record) const override {
    // Only the mean can be merged: the first halves of lambda_d and of A.
    const at::Tensor& lambda_d = param(LAMBDA_D, record.name);
    return scaled_basis_delta(record.name, param(LAMBDA_B, record.name), lambda_d.narrow(0, 0, lambda_d.size(0) / 2));
  }

 private:
  /// eps ~ N(0, 1) shaped like `like`: from the layer's seeded CPU generator (drawn on the CPU in `like`'s dtype,
  /// then moved, as Python does), or like randn_like.
  static at::Tensor noise(const PveraRecord& record, const at::Tensor& like) {
    if (!record.generator) return at::randn_like(like);
    at::Generator generator = *record.generator;  // a handle: draws advance the record's generator
    return at::randn(like.sizes(), generator, at::TensorOptions().dtype(like.scalar_type())).to(like.device());
  }
};

class PveraBuilder final : public BuilderOf<PveraConfig> {
 public:
  using BuilderOf::BuilderOf;

  // The projections are sized by the largest targeted layer and made once, before any layer: every layer of the
  // adapter registers these same two tensors.
  void plan(const std::vector<LayerRequest>& requests) override {
    if (requests.empty()) return;
    const SharedBasisPlan plan = plan_shared_bases(requests, config_.save_projection());
    // Python: torch.Generator().manual_seed(projection_prng_key), pvera_A (2r rows) drawn first, then pvera_B.
    std::tie(a_, b_) = kaiming_bases(plan, 2 * config_.r(), config_.r(), config_.projection_prng_key());
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    auto record = std::make_shared<PveraRecord>(request.adapter_name);
    record->dropout = config_.pvera_dropout();
    record->sample_at_inference = config_.sample_at_inference();
    if (config_.generator_seed()) {
      record->generator = at::detail::createCPUGenerator(static_cast<uint64_t>(*config_.generator_seed()));
    }
    const auto [lambda_b, lambda_d] =
        scaling_vectors(adapter_options(base, request.low_cpu_mem_usage), base.out_features, 2 * config_.r(),
                        config_.init_weights(), config_.d_initial());
    return prepare_dict_adapter<PveraLayer>(request, method_,
                                            {record,
                                             {{PveraLayer::LAMBDA_B, lambda_b},
                                              {PveraLayer::LAMBDA_D, lambda_d},
                                              {PveraLayer::A, a_},
                                              {PveraLayer::B, b_}},
                                             {}});
  }

 private:
  at::Tensor a_, b_;  // the adapter's shared projections
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, PveraConfig& config) {
  return std::make_unique<PveraBuilder>(method, config);
}

}  // namespace peft::detail::pvera
