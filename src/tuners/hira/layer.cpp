// HiRA (Python PEFT's tuners/hira): each active adapter adds the layer's own map with the weight
// W ⊙ (B A) (entry-wise product) to the output, without the bias:
//   Linear:    + x (W ⊙ B A)^T, A (r, in), B (out, r) in hira_A / hira_B;
//   Embedding: + rows of W ⊙ (B A)^T, A (r, num_embeddings), B (dim, r) in hira_embedding_A / _B (no dropout);
//   Conv:      + conv(x, W ⊙ D) with D[o, i, ...] = sum_r B[o, r] A[r, i, ...], A (r, in, *kernel),
//              B (out, r, 1, ...), with the layer's stride, padding, dilation.
// A merge adds W0 ⊙ delta to the weight, W0 the weight from before the first merge, which the layer keeps
// until the unmerge restores it (Python's _base_weight_before_merge, also kept on the CPU).

#include <algorithm>
#include <cctype>

#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <peft/error.h>
#include <peft/tuners/hira/config.h>

#include "core/matching.h"
#include "core/tensor_slots.h"
#include "tuners/common/conv_functional.h"
#include "tuners/common/dict_adapter_layer.h"
#include "tuners/common/layer_checks.h"
#include "tuners/common/merge_from_original.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/hira/layer.h"

namespace peft::detail::hira {
namespace {

enum Containers : size_t { kA = 0, kB = 1, kEmbeddingA = 2, kEmbeddingB = 3, kDropout = 4 };

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  torch::nn::DropoutImpl* dropout = nullptr;  // owned by hira_dropout; null for Identity
};

class HiraLayer final : public KeptWeightLayer {
 public:
  HiraLayer(const LayerRequest& request, const Method& method)
      : KeptWeightLayer(request, method,
                         {{"hira_A"}, {"hira_B"}, {"hira_embedding_A"}, {"hira_embedding_B"}, {"hira_dropout", true, false}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    at::Tensor result = base_forward(x);
    const c10::ScalarType result_dtype = result.scalar_type();
    // Read after the base forward, which may renormalise an Embedding's rows in place (max_norm).
    const at::Tensor weight = base_layer().weight();
    const LayerKind kind = base_layer().kind;
    at::Tensor input = x;
    for (const auto& r : active) {
      const auto& record = static_cast<const Record&>(*r);
      if (kind == LayerKind::Embedding) {
        const at::Tensor modulation = at::matmul(param(kEmbeddingB, record.name), param(kEmbeddingA, record.name));
        result = result + at::embedding(weight * modulation.t(), x);
        continue;
      }
      const at::Tensor& a = param(kA, record.name);
      // Python casts its x for this adapter and keeps it cast for the next one.
      if (input.scalar_type() != a.scalar_type()) input = input.to(a.scalar_type());
      const at::Tensor dropped = record.dropout ? record.dropout->forward(input) : input;
      if (base_layer().is_conv()) {
        result = result + conv_like(base, kind, dropped, weight * delta_weight(record));
      } else {
        const at::Tensor product = at::matmul(param(kB, record.name), a);
        const at::Tensor logical = base_layer().fan_in_fan_out ? weight.t() : weight;
        result = result + at::linear(dropped, logical * product);
      }
    }
    return result.to(result_dtype);
  }

  /// B A laid out like the weight (transposed for an Embedding or a weight stored (in, out)); Python's
  /// get_delta_weight, which the merge scales by the weight from before the first merge.
  at::Tensor delta_weight(const AdapterRecord& record) const override {
    const bool embedding = base_layer().kind == LayerKind::Embedding;
    at::Tensor a = param(embedding ? kEmbeddingA : kA, record.name);
    at::Tensor b = param(embedding ? kEmbeddingB : kB, record.name);
    // Python computes CPU half-precision updates in float32 and rounds the result.
    const c10::ScalarType dtype = a.scalar_type();
    const bool upcast = b.device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
    if (upcast) a = a.to(at::kFloat), b = b.to(at::kFloat);
    at::Tensor delta;
    if (base_layer().is_conv()) {
      // B's trailing dimensions are ones: (out, r) times A flattened to (r, in * kernel).
      delta = at::matmul(b.flatten(1), a.flatten(1)).view(base_layer().weight().sizes());
    } else {
      delta = at::matmul(b, a);
      if (embedding || base_layer().fan_in_fan_out) delta = delta.t();
    }
    return upcast ? delta.to(dtype) : delta;
  }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    const at::Tensor original = pending_original_.to(weight.device(), weight.scalar_type());
    return {weight + original * delta_weight(record).to(weight.scalar_type()), bias};
  }
};

class HiraBuilder final : public BuilderOf<HiraConfig> {
 public:
  HiraBuilder(const Method& method, HiraConfig& config)
      : BuilderOf(method, config), ranks_(config.rank_pattern(), "rank_pattern") {}

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    // Python warns as for the other methods but leaves the config's value as it is.
    bool fan_in_fan_out = config_.fan_in_fan_out();
    align_fan_in_fan_out(base, fan_in_fan_out);
    if (base.is_conv()) {
      const ConvGeometry geometry = conv_geometry(*base.module, base.kind);
      if (geometry.groups > 1) {
        throw UnsupportedLayerError("HiRA does not support " + std::string(layer_kind_name(base.kind)) +
                                    " layers with groups > 1 (got groups=" + std::to_string(geometry.groups) +
                                    "). This applies to both the forward pass and to merging. (layer '" +
                                    request.module_name + "')");
      }
    }
    // Python's quirk: rank_pattern only reaches update_layer of a layer that already is a HiRA layer; a new
    // HiRA layer is made with r.
    const bool hira_layer = request.existing && request.existing->peft_type() == method_.peft_type();
    const int64_t r = hira_layer ? ranks_.lookup(request.module_name, config_.r()) : config_.r();
    if (r <= 0) {
      throw ConfigError("`r` should be a positive integer value but the value passed is " + std::to_string(r));
    }

    auto record = std::make_shared<Record>(request.adapter_name);
    std::shared_ptr<torch::nn::Module> dropout;
    if (config_.hira_dropout() > 0) {
      auto module = std::make_shared<torch::nn::DropoutImpl>(torch::nn::DropoutOptions(config_.hira_dropout()));
      record->dropout = module.get();
      dropout = module;
    } else {
      dropout = std::make_shared<torch::nn::IdentityImpl>();
    }

    std::vector<int64_t> a_shape{r, base.in_features}, b_shape{base.out_features, r};
    if (base.is_conv()) {
      const std::vector<int64_t> kernel = conv_geometry(*base.module, base.kind).kernel;
      a_shape.insert(a_shape.end(), kernel.begin(), kernel.end());
      b_shape.insert(b_shape.end(), kernel.size(), 1);
    }
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    const at::Tensor a = at::empty(a_shape, options), b = at::empty(b_shape, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      initialise(base.kind, r, a, b);
    }
    const bool embedding = base.kind == LayerKind::Embedding;
    return prepare_dict_adapter<HiraLayer>(
        request, method_,
        {record, {{embedding ? kEmbeddingA : kA, a}, {embedding ? kEmbeddingB : kB, b}}, {{kDropout, dropout}}});
  }

 private:
  /// Python's draws, in its order, on the CPU in float32: A and B standard normal, then by init_weights.
  void initialise(LayerKind kind, int64_t r, const at::Tensor& a, const at::Tensor& b) const {
    const InitWeights& init = config_.init_weights();
    at::Tensor draw_a = at::empty(a.sizes(), at::kFloat).normal_();
    at::Tensor draw_b = at::empty(b.sizes(), at::kFloat).normal_();
    if (kind == LayerKind::Embedding) {
      // Python's embedding reset runs unless init_weights is false: A zeros, B standard normal again.
      if (!init.is_bool() || init.enabled()) {
        draw_a.zero_();
        draw_b.normal_();
      }
    } else if (init.enabled()) {
      if (kind != LayerKind::Conv1d && kind != LayerKind::Conv2d && kind != LayerKind::Conv3d && !init.is_bool()) {
        draw_a.normal_(0.0, 1.0 / static_cast<double>(r));  // "gaussian" (checked by the config)
      } else {
        kaiming_default(draw_a);
      }
      draw_b.zero_();
    }
    a.copy_(draw_a);
    b.copy_(draw_b);
  }

  PatternLookup<int64_t> ranks_;
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, HiraConfig& config) {
  return std::make_unique<HiraBuilder>(method, config);
}

}  // namespace peft::detail::hira
