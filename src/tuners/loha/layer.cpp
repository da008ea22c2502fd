// LoHa (Python PEFT's tuners/loha): dW = (W1a W1b) * (W2a W2b) * alpha / r, with an optional CP-decomposed
// kernel for convolutions ("effective conv2d").

#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>

#include <peft/error.h>
#include <peft/tuners/loha/config.h>

#include "tuners/common/conv_functional.h"
#include "tuners/common/lycoris.h"
#include "core/tensor_slots.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/loha/layer.h"

namespace peft::detail::loha {
namespace {

enum Slot : size_t { W1A, W1B, W2A, W2B, T1, T2 };

struct Record : LycorisRecord {
  using LycorisRecord::LycorisRecord;
  bool cp = false;  // the kernel is CP-decomposed (hada_t1 / hada_t2)
};

class LoHaLayer final : public LycorisLayer {
 public:
  LoHaLayer(const LayerRequest& request, const Method& method)
      : LycorisLayer(request, method,
                     {{"hada_w1_a"}, {"hada_w1_b"}, {"hada_w2_a"}, {"hada_w2_b"}, {"hada_t1"}, {"hada_t2"}}) {}

 protected:
  at::Tensor delta_weight(const AdapterRecord& r) const override {
    const auto& record = static_cast<const Record&>(r);
    const std::string& n = record.name;
    at::Tensor weight;
    if (record.cp) {
      // rebuild_i = einsum("i j k l, j r, i p -> p r k l", t_i, w_i_b, w_i_a)
      const at::Tensor first = at::einsum("ijkl,jr,ip->prkl", {param(T1, n), param(W1B, n), param(W1A, n)});
      const at::Tensor second = at::einsum("ijkl,jr,ip->prkl", {param(T2, n), param(W2B, n), param(W2A, n)});
      weight = first * second * record.scaling;
    } else {
      weight = at::matmul(param(W1A, n), param(W1B, n)) * at::matmul(param(W2A, n), param(W2B, n)) * record.scaling;
    }
    return weight.reshape(base_layer().weight().sizes());
  }
};

class LoHaBuilder final : public BuilderOf<const LoHaConfig> {
 public:
  LoHaBuilder(const Method& method, const LoHaConfig& config) : BuilderOf(method, config), settings_(config) {}

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    auto record = std::make_shared<Record>(request.adapter_name);
    settings_.fill(*record, request.module_name);
    const int64_t r = record->r;
    record->rank_dropout_scale = true;  // LoHa always rescales the kept rows

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    DictAdapterLayer::NewAdapter adapter;
    auto add = [&](Slot slot, std::vector<int64_t> shape) { adapter.tensors.emplace_back(slot, at::empty(shape, options)); };
    const int64_t out = base.out_features;
    if (base.is_conv()) {
      const ConvGeometry g = conv_geometry(*base.module, base.kind);
      const int64_t in = g.in_channels / g.groups;
      int64_t kernel = 1;
      for (int64_t k : g.kernel) kernel *= k;
      record->cp = config_.use_effective_conv2d() && kernel != 1;
      if (record->cp) {
        const int64_t k1 = g.kernel[0], k2 = g.kernel.size() > 1 ? g.kernel[1] : 1;
        add(W1A, {r, out}), add(W1B, {r, in}), add(W2A, {r, out}), add(W2B, {r, in});
        add(T1, {r, r, k1, k2}), add(T2, {r, r, k1, k2});
      } else {
        add(W1A, {out, r}), add(W1B, {r, in * kernel}), add(W2A, {out, r}), add(W2B, {r, in * kernel});
      }
    } else {
      add(W1A, {out, r}), add(W1B, {r, base.in_features}), add(W2A, {out, r}), add(W2B, {r, base.in_features});
    }
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      for (auto& [slot, tensor] : adapter.tensors) kaiming_default(tensor);
      // init_weights: W2b starts at zero, so the adapter starts as a no-op.
      if (config_.init_weights()) adapter.tensors[W2B].second.zero_();
    }
    adapter.record = record;
    return prepare_dict_adapter<LoHaLayer>(request, method_, std::move(adapter));
  }

 private:
  LycorisSettings settings_;
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const LoHaConfig& config) {
  return std::make_unique<LoHaBuilder>(method, config);
}

}  // namespace peft::detail::loha
