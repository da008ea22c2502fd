// LoKr (Python PEFT's tuners/lokr): dW = kron(W1, W2) * alpha / r, where W1 (a x c) and W2 (b x d) factor
// the weight's (out x in) shape, each either full or a low-rank product (W2 with an optional CP core for
// convolutions).

#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/kron.h>
#include <ATen/ops/matmul.h>

#include <peft/error.h>
#include <peft/tuners/lokr/config.h>

#include "tuners/common/conv_functional.h"
#include "tuners/common/lycoris.h"
#include "core/tensor_slots.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/lokr/layer.h"

namespace peft::detail::lokr {
namespace {

enum Slot : size_t { W1, W1A, W1B, W2, W2A, W2B, T2 };

// Python's factorization(): m * n = dimension with m <= n, m close to `factor` (or to the square root).
std::pair<int64_t, int64_t> factorization(int64_t dimension, int64_t factor) {
  if (factor > 0 && dimension % factor == 0) return {factor, dimension / factor};
  if (factor == -1) factor = dimension;
  int64_t m = 1, n = dimension;
  const int64_t length = m + n;
  while (m < n) {
    int64_t new_m = m + 1;
    while (dimension % new_m != 0) ++new_m;
    const int64_t new_n = dimension / new_m;
    if (new_m + new_n > length || new_m > factor) break;
    m = new_m, n = new_n;
  }
  if (m > n) std::swap(m, n);
  return {m, n};
}

struct Record : LycorisRecord {
  using LycorisRecord::LycorisRecord;
  bool full_w1 = true, full_w2 = true, cp = false;
};

class LoKrLayer final : public LycorisLayer {
 public:
  LoKrLayer(const LayerRequest& request, const Method& method)
      : LycorisLayer(request, method,
                     {{"lokr_w1"}, {"lokr_w1_a"}, {"lokr_w1_b"}, {"lokr_w2"}, {"lokr_w2_a"}, {"lokr_w2_b"}, {"lokr_t2"}}) {}

 protected:
  at::Tensor delta_weight(const AdapterRecord& r) const override {
    const auto& record = static_cast<const Record&>(r);
    const std::string& n = record.name;
    at::Tensor w1 = record.full_w1 ? param(W1, n) : at::matmul(param(W1A, n), param(W1B, n));
    at::Tensor w2;
    if (record.full_w2) {
      w2 = param(W2, n);
    } else if (record.cp) {
      w2 = at::einsum("ijkl,ip,jr->prkl", {param(T2, n), param(W2A, n), param(W2B, n)});
    } else {
      w2 = at::matmul(param(W2A, n), param(W2B, n));
    }
    if (w2.dim() == 4) w1 = w1.unsqueeze(2).unsqueeze(2);
    const at::Tensor weight = at::kron(w1, w2.contiguous()) * record.scaling;
    return weight.reshape(base_layer().weight().sizes());
  }
};

class LoKrBuilder final : public BuilderOf<const LoKrConfig> {
 public:
  LoKrBuilder(const Method& method, const LoKrConfig& config) : BuilderOf(method, config), settings_(config) {}

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    auto record = std::make_shared<Record>(request.adapter_name);
    settings_.fill(*record, request.module_name);
    const int64_t r = record->r;
    record->rank_dropout_scale = config_.rank_dropout_scale();

    // shape = ((a, b), (c, d), *kernel): out = a * b, in = c * d.
    int64_t in = base.in_features;
    std::vector<int64_t> kernel;
    if (base.is_conv()) {
      const ConvGeometry g = conv_geometry(*base.module, base.kind);
      in = g.in_channels / g.groups;
      kernel = g.kernel;
    }
    const auto [in_m, in_n] = factorization(in, config_.decompose_factor());
    const auto [out_l, out_k] = factorization(base.out_features, config_.decompose_factor());
    record->full_w1 = !(config_.decompose_both() && 2 * r < std::max(out_l, in_m));
    record->full_w2 = !(2 * r < std::max(out_k, in_n));
    int64_t kernel_size = 1;
    for (int64_t k : kernel) kernel_size *= k;
    record->cp = base.is_conv() && !record->full_w2 && config_.use_effective_conv2d() && kernel_size != 1;

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    DictAdapterLayer::NewAdapter adapter;
    auto add = [&](Slot slot, std::vector<int64_t> shape) { adapter.tensors.emplace_back(slot, at::empty(shape, options)); };
    if (record->full_w1) {
      add(W1, {out_l, in_m});
    } else {
      add(W1A, {out_l, r}), add(W1B, {r, in_m});
    }
    if (record->full_w2) {
      std::vector<int64_t> shape{out_k, in_n};
      shape.insert(shape.end(), kernel.begin(), kernel.end());
      add(W2, shape);
    } else if (record->cp) {
      add(W2A, {r, out_k}), add(W2B, {r, in_n}), add(T2, {r, r, kernel[0], kernel.size() > 1 ? kernel[1] : 1});
    } else {
      add(W2A, {out_k, r}), add(W2B, {r, in_n * kernel_size});
    }
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      for (auto& [slot, tensor] : adapter.tensors) kaiming_default(tensor);
      const InitWeights& init = config_.init_weights();
      for (auto& [slot, tensor] : adapter.tensors) {
        if (init.is_bool() && init.enabled() && (slot == W1 || slot == W1A)) tensor.zero_();  // W1 = 0: no-op start
        if (!init.is_bool() && (slot == W2 || slot == W2B)) tensor.zero_();                  // "lycoris": W2 = 0
      }
    }
    adapter.record = record;
    return prepare_dict_adapter<LoKrLayer>(request, method_, std::move(adapter));
  }

 private:
  LycorisSettings settings_;
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const LoKrConfig& config) {
  return std::make_unique<LoKrBuilder>(method, config);
}

}  // namespace peft::detail::lokr
