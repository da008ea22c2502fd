// VB-LoRA (Python PEFT's tuners/vblora): y = W x + B (A dropout(x)). Every length-L sub-vector of A (r x in) and
// B (out x r) mixes the topk vectors of a bank (num_vectors x L) with the largest logits, weighted by the softmax of
// those logits. The bank is one tensor per adapter, shared by all its layers; the logits are the layer's.

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/topk.h>

#include <peft/error.h>

#include "tuners/common/layer_checks.h"
#include "tuners/common/cast_input_layer.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/vblora/layer.h"

namespace peft::detail::vblora {
namespace {

struct Record : CastInputRecord {
  using CastInputRecord::CastInputRecord;
  int64_t topk = 0;
};

class VBLoRALayer final : public CastInputLayer {
 public:
  enum Index : size_t { LOGITS_A, LOGITS_B, BANK };

  VBLoRALayer(const LayerRequest& request, const Method& method)
      : CastInputLayer(request, method, {{"vblora_logits_A"}, {"vblora_logits_B"}, {"vblora_vector_bank"}}) {}

 protected:
  // The input takes the bank's dtype.
  c10::ScalarType compute_dtype(const std::string& adapter, const c10::Device&) const override {
    return param(BANK, adapter).scalar_type();
  }

  at::Tensor adapter_output(const CastInputRecord& record, const at::Tensor& input, bool training) const override {
    const auto [a, b] = factors(static_cast<const Record&>(record), /*to_float=*/false, training);
    return at::linear(at::linear(input, a), b);
  }

  at::Tensor delta_weight(const AdapterRecord& r) const override {
    const at::Tensor& logits = param(LOGITS_A, r.name);
    const c10::ScalarType dtype = logits.scalar_type();
    // Half-precision matmuls are slow (or missing) on CPU: Python computes the update in float32 there.
    const bool to_float = logits.device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
    const auto [a, b] = factors(static_cast<const Record&>(r), to_float, /*training=*/false);
    const at::Tensor delta = at::mm(b, a);
    return base_layer().fan_in_fan_out ? delta.t() : delta;
  }

 private:
  /// A (r x in) and B (out x r) of the adapter.
  std::pair<at::Tensor, at::Tensor> factors(const Record& record, bool to_float, bool training) const {
    at::Tensor logits_a = param(LOGITS_A, record.name), logits_b = param(LOGITS_B, record.name);
    // A save_only_topk_weights checkpoint loads as logits of -inf outside the top k: fine for inference, not for
    // training (Python's check).
    if (training && at::isinf(logits_a[0][0]).any().item<bool>()) {
      throw Error("Found infinity values in VB-LoRA logits. Ensure training was not resumed from a "
                  "`save_only_topk_weights` model.");
    }
    at::Tensor bank = param(BANK, record.name).to(logits_a.device());
    if (to_float) {
      logits_a = logits_a.to(at::kFloat);
      logits_b = logits_b.to(at::kFloat);
      bank = bank.to(at::kFloat);
    }
    // A: (r, in/L, L) -> (r, in); B: (out/L, r, L) -> (out/L, L, r) -> (out, r).
    const at::Tensor a = mix(logits_a, bank, record.topk).reshape({logits_a.size(0), -1});
    const at::Tensor b = mix(logits_b, bank, record.topk).transpose(1, 2).reshape({-1, logits_b.size(1)});
    return {a, b};
  }

  /// (..., num_vectors) logits -> (..., L) sub-vectors: the softmax-weighted sum of the top-k bank vectors.
  static at::Tensor mix(const at::Tensor& logits, const at::Tensor& bank, int64_t topk) {
    const auto [top_logits, indices] = at::topk(logits, topk, -1);
    const at::Tensor weights = at::softmax(top_logits, -1);
    std::vector<int64_t> shape = indices.sizes().vec();
    shape.push_back(bank.size(1));
    const at::Tensor vectors = bank.index_select(0, indices.reshape({-1})).view(shape);
    return (weights.unsqueeze(-1) * vectors).sum(-2);
  }
};

class VBLoRABuilder final : public BuilderOf<VBLoRAConfig> {
 public:
  using BuilderOf::BuilderOf;

  // One bank for the adapter, registered by every layer. Its values are drawn in prepare(), as Python re-draws
  // it for every layer it adapts (the last draw stays): the default generator then sees Python's sequence.
  void plan(const std::vector<LayerRequest>& requests) override {
    if (requests.empty()) return;
    const at::TensorOptions options = adapter_options(requests.front().base, requests.front().low_cpu_mem_usage);
    bank_ = at::empty({config_.num_vectors(), config_.vector_length()}, options);
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    const int64_t length = config_.vector_length();
    for (const auto& [what, features] : {std::pair<const char*, int64_t>{"in_features", base.in_features},
                                         std::pair<const char*, int64_t>{"out_features", base.out_features}}) {
      if (features % length != 0) {
        throw ConfigError("`" + std::string(what) + "` " + std::to_string(features) +
                          " must be divisible by `vector_length` " + std::to_string(length) + " (layer '" +
                          request.module_name + "')");
      }
    }
    auto record = std::make_shared<Record>(request.adapter_name);
    record->topk = config_.topk();
    record->dropout = config_.vblora_dropout();

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    const int64_t r = config_.r(), n = config_.num_vectors();
    at::Tensor logits_a = at::empty({r, base.in_features / length, n}, options);
    at::Tensor logits_b = at::empty({base.out_features / length, r, n}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      // Python's draws, in its order, on float32 CPU tensors: the bank, then the logits of A, then of B.
      const at::TensorOptions cpu = at::TensorOptions().dtype(at::kFloat);
      const double bound = config_.init_vector_bank_bound();
      const at::Tensor bank = at::empty(bank_.sizes(), cpu).uniform_(-bound, bound);
      if (materialised(bank_.options())) bank_.copy_(bank);
      logits_a.copy_(at::empty(logits_a.sizes(), cpu).normal_(0, config_.init_logits_std()));
      logits_b.copy_(at::empty(logits_b.sizes(), cpu).normal_(0, config_.init_logits_std()));
    }
    return prepare_dict_adapter<VBLoRALayer>(
        request, method_,
        {record, {{VBLoRALayer::LOGITS_A, logits_a}, {VBLoRALayer::LOGITS_B, logits_b}, {VBLoRALayer::BANK, bank_}}, {}});
  }

 private:
  at::Tensor bank_;  // the adapter's shared vector bank
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, VBLoRAConfig& config) {
  return std::make_unique<VBLoRABuilder>(method, config);
}

}  // namespace peft::detail::vblora
