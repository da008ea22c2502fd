// UniLoRA (Python PEFT's tuners/unilora): y = W x + B (A dropout(x)), where A[i][j] = theta_d[indices_A[i][j]] *
// scales_A[i][j] (B likewise). theta_d is one trained vector per adapter, shared by all its layers; the indices
// (int64) and scales (1 / sqrt(how often the index is used in the whole adapter)) are fixed buffers, regenerated
// from proj_seed on load unless the checkpoint holds them (save_indices).

#include <ATen/core/grad_mode.h>
#include <ATen/ops/bincount.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/zeros.h>

#include <peft/error.h>

#include "tuners/common/layer_checks.h"
#include "tuners/common/cast_input_layer.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/unilora/index.h"
#include "tuners/unilora/layer.h"

namespace peft::detail::unilora {
namespace {

using Record = CastInputRecord;

std::vector<DictAdapterLayer::Container> containers(bool save_indices) {
  std::vector<DictAdapterLayer::Container> out;
  for (const char* name : {"unilora_indices_A", "unilora_indices_B", "unilora_scales_A", "unilora_scales_B"}) {
    DictAdapterLayer::Container buffers{name};
    buffers.holds_buffers = true;
    buffers.in_checkpoint = save_indices;  // Python's BufferDict(persistent=save_indices)
    out.push_back(buffers);
  }
  out.push_back({"unilora_theta_d"});  // shared by the adapter's layers (Method::shares)
  return out;
}

class UniLoraLayer final : public CastInputLayer {
 public:
  enum Index : size_t { INDICES_A, INDICES_B, SCALES_A, SCALES_B, THETA };

  UniLoraLayer(const LayerRequest& request, const Method& method, bool save_indices)
      : CastInputLayer(request, method, containers(save_indices)) {}

 protected:
  // The input takes theta_d's dtype.
  c10::ScalarType compute_dtype(const std::string& adapter, const c10::Device&) const override {
    return param(THETA, adapter).scalar_type();
  }

  at::Tensor adapter_output(const CastInputRecord& record, const at::Tensor& input, bool) const override {
    const auto [a, b] = factors(record.name, /*to_float=*/false);
    return at::linear(at::linear(input, a), b);
  }

  at::Tensor delta_weight(const AdapterRecord& r) const override {
    const c10::ScalarType dtype = param(THETA, r.name).scalar_type();
    // Half-precision matmuls are slow (or missing) on CPU: Python computes the update in float32 there.
    const bool to_float =
        param(INDICES_A, r.name).device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
    const auto [a, b] = factors(r.name, to_float);
    at::Tensor delta = at::mm(b, a);
    if (base_layer().fan_in_fan_out) delta = delta.t();
    return to_float ? delta.to(dtype) : delta;
  }

 private:
  /// A (r x in) and B (out x r): theta_d gathered at the indices, times the scales.
  std::pair<at::Tensor, at::Tensor> factors(const std::string& adapter, bool to_float) const {
    const at::Tensor& indices_a = param(INDICES_A, adapter);
    const at::Tensor& indices_b = param(INDICES_B, adapter);
    at::Tensor theta = param(THETA, adapter).to(indices_a.device());
    at::Tensor scales_a = param(SCALES_A, adapter).to(indices_a.device());
    at::Tensor scales_b = param(SCALES_B, adapter).to(indices_b.device());
    if (to_float) {
      theta = theta.to(at::kFloat);
      scales_a = scales_a.to(at::kFloat);
      scales_b = scales_b.to(at::kFloat);
    }
    auto gather = [&theta](const at::Tensor& indices) {
      return theta.index_select(0, indices.reshape({-1})).view(indices.sizes());
    };
    return {gather(indices_a) * scales_a, gather(indices_b) * scales_b};
  }
};

class UniLoraBuilder final : public BuilderOf<UniLoraConfig> {
 public:
  using BuilderOf::BuilderOf;

  // theta_d once for the adapter, registered by every layer; the index assignment of all layers at once, as
  // Python assigns it after injecting every layer (in module order, A then B of each layer).
  void plan(const std::vector<LayerRequest>& requests) override {
    if (requests.empty()) return;
    const int64_t length = config_.theta_d_length(), r = config_.r();
    {
      // Python's draw, on a float32 CPU tensor, before any layer's.
      at::NoGradGuard no_grad;
      const at::TensorOptions cpu = at::TensorOptions().dtype(at::kFloat);
      const at::Tensor initial = config_.init_weights()
                                     ? at::empty({length}, cpu).uniform_(-config_.init_theta_d_bound(),
                                                                         config_.init_theta_d_bound())
                                     : at::randn({length}, cpu);
      const at::TensorOptions options = adapter_options(requests.front().base, requests.front().low_cpu_mem_usage);
      theta_ = materialised(options) ? initial.to(options) : at::empty({length}, options);
    }
    int64_t count = 0;
    for (const LayerRequest& request : requests) count += r * (request.base.in_features + request.base.out_features);
    indices_ = generate_index(count, length, static_cast<uint64_t>(config_.proj_seed()));
    const at::Tensor all = at::from_blob(indices_.data(), {count}, at::TensorOptions().dtype(at::kLong));
    inverse_sqrt_counts_ = at::zeros({length}, at::TensorOptions().dtype(at::kFloat));
    const at::Tensor counts = at::bincount(all, {}, length);
    const at::Tensor used = counts > 0;
    inverse_sqrt_counts_.index_put_({used}, counts.index({used}).to(at::kFloat).rsqrt());
    next_ = 0;
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    auto record = std::make_shared<Record>(request.adapter_name);
    record->dropout = config_.unilora_dropout();
    const int64_t r = config_.r(), length = config_.theta_d_length();
    // Python draws random indices for each layer first, and replaces them by the assigned ones.
    at::randint(length, {r, base.in_features}, at::TensorOptions().dtype(at::kLong));
    at::randint(length, {base.out_features, r}, at::TensorOptions().dtype(at::kLong));
    // Index and scale buffers hold values even with low_cpu_mem_usage: checkpoints need not hold them.
    const at::TensorOptions options = adapter_options(base, /*low_cpu_mem_usage=*/false);
    const at::Tensor indices_a = take({r, base.in_features});
    const at::Tensor indices_b = take({base.out_features, r});
    const at::Tensor scales_a = inverse_sqrt_counts_.index({indices_a}).to(options);
    const at::Tensor scales_b = inverse_sqrt_counts_.index({indices_b}).to(options);
    const bool save_indices = config_.save_indices();
    return prepare_dict_adapter(
        request, [&] { return std::make_shared<UniLoraLayer>(request, method_, save_indices); },
        {record,
         {{UniLoraLayer::INDICES_A, indices_a.to(options.device())},
          {UniLoraLayer::INDICES_B, indices_b.to(options.device())},
          {UniLoraLayer::SCALES_A, scales_a},
          {UniLoraLayer::SCALES_B, scales_b},
          {UniLoraLayer::THETA, theta_}},
         {}});
  }

 private:
  /// The next `shape.numel()` assigned indices, as an int64 CPU tensor of that shape.
  at::Tensor take(std::vector<int64_t> shape) {
    const int64_t n = shape[0] * shape[1];
    TORCH_INTERNAL_ASSERT(next_ + n <= static_cast<int64_t>(indices_.size()), "UniLoRA: layers not seen by plan()");
    at::Tensor out = at::from_blob(indices_.data() + next_, shape, at::TensorOptions().dtype(at::kLong)).clone();
    next_ += n;
    return out;
  }

  at::Tensor theta_;                 // the adapter's shared trainable vector
  std::vector<int64_t> indices_;     // the assignment of every layer's A and B entries, in request order
  int64_t next_ = 0;                 // the first index prepare() has not handed out
  at::Tensor inverse_sqrt_counts_;   // per theta_d entry: 1 / sqrt(its uses), 0 where unused
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, UniLoraConfig& config) {
  return std::make_unique<UniLoraBuilder>(method, config);
}

}  // namespace peft::detail::unilora
