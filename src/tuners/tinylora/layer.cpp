// TinyLoRA (Python PEFT's tuners/tinylora). Per layer: frozen truncated-SVD factors of the base weight,
// tinylora_A (r x in) and tinylora_B (out x r), and a frozen random tensor tinylora_P (u x r x r); per adapter, a
// trained vector v for each group of layers (the rows of the adapter's shared tinylora_v). With R = sum_i v[i] P[i]:
//   Linear / Conv1D: y = W x + B R A dropout(x)
//   Embedding:       y = W[x] + dropout(B[x]) R A
// and dW = B R A (transposed for a weight stored (in, out)).

#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_svd.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/normal.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros.h>

#include <peft/error.h>

#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/tinylora/layer.h"

namespace peft::detail::tinylora {
namespace {

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  double dropout = 0;
  int64_t group = 0;  // the row of the adapter's tinylora_v this layer uses
};

std::vector<DictAdapterLayer::Container> containers(bool save_projection) {
  std::vector<DictAdapterLayer::Container> out;
  for (const char* name : {"tinylora_A", "tinylora_B", "tinylora_P"}) {
    DictAdapterLayer::Container buffers{name};
    buffers.holds_buffers = true;
    out.push_back(buffers);
  }
  out.back().in_checkpoint = save_projection;  // Python's tinylora_P BufferDict: persistent=save_projection
  out.push_back({"tinylora_v"});                 // shared by the adapter's layers (Method::shares)
  return out;
}

class TinyLoraLayer final : public DictAdapterLayer {
 public:
  enum Index : size_t { A, B, P, V };

  TinyLoraLayer(const LayerRequest& request, const Method& method, bool save_projection)
      : DictAdapterLayer(request, method, containers(save_projection)) {}

 protected:
  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const bool training = base.is_training();
    at::Tensor result = base_forward(x);
    if (base_layer().kind == LayerKind::Embedding) {
      for (const auto& r : active) {
        const auto& record = static_cast<const Record&>(*r);
        const at::TensorOptions options = result.options();
        const at::Tensor a = param(A, record.name).to(options), b = param(B, record.name).to(options);
        const at::Tensor rotation = mixed(record).to(options);
        at::Tensor rows = at::embedding(b, x);
        if (record.dropout > 0) rows = at::dropout(rows, record.dropout, training);
        result = result + at::matmul(at::matmul(rows, rotation), a);
      }
      return result;
    }
    const c10::ScalarType previous = x.scalar_type();
    for (const auto& r : active) {
      const auto& record = static_cast<const Record&>(*r);
      const at::Tensor& a = param(A, record.name);
      // Python drops out the original input for each adapter, then casts it to the factors' dtype.
      at::Tensor input = record.dropout > 0 ? at::dropout(x, record.dropout, training) : x;
      input = input.to(a.scalar_type());
      const at::Tensor rotation = mixed(record).to(input.device());
      const at::Tensor h = at::linear(at::linear(input, a.to(input.device())), rotation);
      result = result + at::linear(h, param(B, record.name).to(input.device()));
    }
    return result.to(previous);
  }

  at::Tensor delta_weight(const AdapterRecord& r) const override {
    const auto& record = static_cast<const Record&>(r);
    at::Tensor a = param(A, record.name);
    const c10::ScalarType dtype = a.scalar_type();
    at::Tensor b = param(B, record.name).to(a.options());
    at::Tensor rotation = mixed(record).to(a.options());
    // Half-precision matmuls are slow (or missing) on CPU: Python computes the update in float32 there.
    const bool to_float = a.device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
    if (to_float) {
      a = a.to(at::kFloat);
      b = b.to(at::kFloat);
      rotation = rotation.to(at::kFloat);
    }
    at::Tensor delta = at::mm(at::mm(b, rotation), a);
    if (base_layer().fan_in_fan_out) delta = delta.t();
    return to_float ? delta.to(dtype) : delta;
  }

 private:
  /// R = sum_i v[i] P[i] (r x r), in v's dtype and on its device.
  at::Tensor mixed(const Record& record) const {
    const at::Tensor v = param(V, record.name).select(0, record.group);
    const at::Tensor p = param(P, record.name).to(v.options());
    return at::einsum("i,ijk->jk", {v, p});
  }
};

/// Python's round() of a double: half to even.
int64_t round_half_even(double value) { return static_cast<int64_t>(std::nearbyint(value)); }

class TinyLoraBuilder final : public BuilderOf<TinyLoraConfig> {
 public:
  using BuilderOf::BuilderOf;

  // Every target's index (module order, as Python numbers them for the groups and the projection seeds), and the
  // adapter's vectors, one row per group, created in group order as Python creates them.
  void plan(const std::vector<LayerRequest>& requests) override {
    if (requests.empty()) return;
    const int64_t n = static_cast<int64_t>(requests.size());
    const int64_t groups = std::max<int64_t>(1, round_half_even(static_cast<double>(n) * (1.0 - config_.weight_tying())));
    const int64_t group_size = std::max<int64_t>(1, n / groups);
    index_.clear();
    for (int64_t i = 0; i < n; ++i) index_[requests[i].module_name] = {i, std::min(i / group_size, groups - 1)};

    const int64_t u = config_.u();
    const at::TensorOptions options = adapter_options(requests.front().base, requests.front().low_cpu_mem_usage);
    if (!materialised(options)) {
      vectors_ = at::empty({groups, u}, options);
      return;
    }
    at::NoGradGuard no_grad;
    // Drawn on the CPU in the layer's dtype with the default generator, group after group.
    at::Tensor rows = at::zeros({groups, u}, at::TensorOptions().dtype(options.dtype()));
    const InitWeights& init = config_.init_weights();
    if (!init.is_bool() && init.method() == "uniform") {
      for (int64_t g = 0; g < groups; ++g) rows.select(0, g).uniform_(-config_.init_v_bound(), config_.init_v_bound());
    }
    vectors_ = rows.to(options);
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    if (base.is_linear()) align_fan_in_fan_out(base, config_.fan_in_fan_out());
    const auto it = index_.find(request.module_name);
    TORCH_INTERNAL_ASSERT(it != index_.end(), "TinyLoRA: layer not seen by plan()");
    const auto [layer_index, group] = it->second;

    auto record = std::make_shared<Record>(request.adapter_name);
    record->dropout = config_.tinylora_dropout();
    record->group = group;

    // The weight as (out, in) (an Embedding's as (num_embeddings, dim)); the rank is capped by its shape.
    const bool transposed = base.is_linear() && base.fan_in_fan_out;
    const at::Tensor weight = base.weight();
    const int64_t rows = weight.size(transposed ? 1 : 0), cols = weight.size(transposed ? 0 : 1);
    const int64_t r = std::min(config_.r(), std::min(rows, cols));

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor a, b;
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      // Python's SVD in float32: A = sqrt(S_r) V_r^T, B = U_r sqrt(S_r), in the weight's dtype.
      const at::Tensor w = (transposed ? weight.detach().t() : weight.detach()).to(at::kFloat);
      const auto [u_full, s_full, vh_full] = at::linalg_svd(w, /*full_matrices=*/false);
      const at::Tensor sqrt_s = at::sqrt(s_full.narrow(0, 0, r).to(options.dtype()));
      const at::Tensor u_r = u_full.narrow(1, 0, r).to(options.dtype());
      const at::Tensor v_r = vh_full.narrow(0, 0, r).to(options.dtype());
      a = (sqrt_s.unsqueeze(1) * v_r).contiguous().to(options);
      b = (u_r * sqrt_s.unsqueeze(0)).contiguous().to(options);
    } else {
      a = at::empty({r, cols}, options);
      b = at::empty({rows, r}, options);
    }

    // P: N(0, 1/r) from a CPU generator seeded with projection_seed + the layer's index. Checkpoints without P
    // need its values even with low_cpu_mem_usage.
    const at::TensorOptions p_options =
        config_.save_projection() ? options : adapter_options(base, /*low_cpu_mem_usage=*/false);
    at::Tensor p;
    if (materialised(p_options)) {
      at::Generator generator =
          at::detail::createCPUGenerator(static_cast<uint64_t>(config_.projection_seed() + layer_index));
      const double std = 1.0 / std::pow(static_cast<double>(r), 0.5);
      p = at::normal(0.0, std, {config_.u(), r, r}, generator, at::TensorOptions().dtype(at::kFloat)).to(p_options);
    } else {
      p = at::empty({config_.u(), r, r}, p_options);
    }

    const bool save_projection = config_.save_projection();
    return prepare_dict_adapter(
        request, [&] { return std::make_shared<TinyLoraLayer>(request, method_, save_projection); },
        {record, {{TinyLoraLayer::A, a}, {TinyLoraLayer::B, b}, {TinyLoraLayer::P, p}, {TinyLoraLayer::V, vectors_}}, {}});
  }

 private:
  std::unordered_map<std::string, std::pair<int64_t, int64_t>> index_;  // module -> (index among targets, group)
  at::Tensor vectors_;  // the adapter's trained vectors, one row per group
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, TinyLoraConfig& config) {
  return std::make_unique<TinyLoraBuilder>(method, config);
}

}  // namespace peft::detail::tinylora
