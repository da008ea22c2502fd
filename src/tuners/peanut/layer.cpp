// PEANuT (Python PEFT's tuners/peanut): y = W x + x dW^T, where the update is computed from the base weight itself:
// h = f(W^T A^T) (in x r), then `depth` encoders h = f(E_i h) keeping each input as a residual, then `depth`
// decoders h = f(D_i h) + residual (innermost first), and dW = scaling * B(h)^T. A merge adds the update computed
// from the weight before the first merge; unmerging restores that weight, as Python does.

#include <algorithm>
#include <map>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <torch/nn/modules/container/modulelist.h>

#include "core/module_access.h"
#include "core/tensor_slots.h"
#include "tuners/common/merge_from_original.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/peanut/activation.h"
#include "tuners/peanut/layer.h"

namespace peft::detail::peanut {
namespace {

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  Activation act;
  double scaling = 1;
};

class PeanutLayer final : public DictAdapterLayer {
 public:
  enum Index : size_t { A, B, ENCODERS, DECODERS };

  PeanutLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method,
                         {{"peanut_A", true}, {"peanut_B", true}, {"peanut_encoders", true}, {"peanut_decoders", true}}) {}

  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module& base, const std::vector<std::string>& names,
                                               bool safe_merge) override;

  // Every merged adapter is unmerged at once, so the kept weight is no longer needed.
  void unmerge(torch::nn::Module& base) override {
    DictAdapterLayer::unmerge(base);
    std::lock_guard<std::mutex> lock(mutex_);
    before_merge_ = at::Tensor();
  }

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    at::Tensor result = base_forward(x);
    const c10::ScalarType result_type = result.scalar_type();
    const at::Tensor weight = base_layer().weight();
    for (const auto& r : active) {
      const at::Tensor delta = update(*r, weight);
      // Python casts the input to the update's dtype for this adapter only.
      result = result + at::matmul(x.to(delta.scalar_type()), delta.t()).to(result_type);
    }
    return result;
  }

  at::Tensor delta_weight(const AdapterRecord& record) const override {
    return update(record, base_layer().weight().detach());
  }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    // From the weight before the first merge (prepare_merge sets it), so merged adapters add independent updates.
    return {weight + update(record, pending_original_).to(weight.scalar_type()), bias};
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& record) const override {
    // Called with mutex_ held. Python restores the weight it kept at the first merge.
    if (before_merge_.defined()) return {before_merge_.to(weight.options()), bias};
    return {weight - update(record, weight).to(weight.scalar_type()), bias};
  }

 private:
  /// The layer's Linear weights in a ModuleList container, in order.
  std::vector<at::Tensor> list_weights(size_t index, const std::string& adapter) const {
    std::vector<at::Tensor> out;
    const std::shared_ptr<torch::nn::Module> list = module(index, adapter);
    if (!list) return out;
    for (const auto& child : list->children()) out.push_back(*parameters_of(*child).find("weight"));
    return out;
  }

  /// The update dW (out x in) the adapter makes from `weight`.
  at::Tensor update(const AdapterRecord& r, const at::Tensor& weight) const {
    const auto& record = static_cast<const Record&>(r);
    const at::Tensor& a = param(A, record.name);
    at::Tensor h = record.act(at::matmul(weight.t().to(a.scalar_type()), a.t()));
    const std::vector<at::Tensor> encoders = list_weights(ENCODERS, record.name);
    const std::vector<at::Tensor> decoders = list_weights(DECODERS, record.name);
    std::vector<at::Tensor> residuals;
    for (const at::Tensor& e : encoders) {
      residuals.push_back(h);
      h = record.act(at::linear(h, e));
    }
    for (size_t i = 0; i < decoders.size(); ++i) {
      h = record.act(at::linear(h, decoders[i])) + residuals[residuals.size() - 1 - i];
    }
    return (at::linear(h, param(B, record.name)) * record.scaling).t();
  }

  at::Tensor pending_original_;  // the weight updates are computed from, only set during prepare_merge
  at::Tensor before_merge_;      // the weight before the first merge, until unmerged
};

std::unique_ptr<PendingChange> PeanutLayer::prepare_merge(torch::nn::Module& base, const std::vector<std::string>& names,
                                                          bool safe_merge) {
  at::Tensor original;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    original = before_merge_;
  }
  const bool first = !original.defined() || merged_adapters().empty();
  if (first) original = at::Tensor();
  const at::Tensor weight = base_layer().weight().detach();
  if (!original.defined()) original = weight.device().is_meta() ? weight : weight.clone();
  return prepare_merge_from_original(std::move(original), pending_original_, mutex_, before_merge_,
                                     [&] { return DictAdapterLayer::prepare_merge(base, names, safe_merge); });
}

class PeanutBuilder final : public BuilderOf<PeanutConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    const int64_t r = config_.r(), out = base.out_features;
    auto record = std::make_shared<Record>(request.adapter_name);
    record->act = activation(config_.act_fn());
    record->scaling = config_.scaling();

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    auto a = make_linear(out, r, false, options);
    std::vector<std::shared_ptr<torch::nn::LinearImpl>> encoders, decoders;
    for (int64_t i = 0; i < config_.depth(); ++i) encoders.push_back(make_linear(r, r, false, options));
    for (int64_t i = 0; i < config_.depth(); ++i) decoders.push_back(make_linear(r, r, false, options));
    auto b = make_linear(r, out, false, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      // Python's draws: each nn.Linear's constructor (A, encoders, decoders, B), then reset_peanut_parameters
      // (A, encoders, decoders, and B unless init_weights, which zeroes it).
      for (int pass = 0; pass < 2; ++pass) {
        kaiming_default(a->weight);
        for (const auto& e : encoders) kaiming_default(e->weight);
        for (const auto& d : decoders) kaiming_default(d->weight);
        if (pass == 0 || !config_.init_weights()) kaiming_default(b->weight);
      }
      if (config_.init_weights()) b->weight.zero_();
    }
    auto encoder_list = std::make_shared<torch::nn::ModuleListImpl>();
    for (const auto& e : encoders) encoder_list->push_back(e);
    auto decoder_list = std::make_shared<torch::nn::ModuleListImpl>();
    for (const auto& d : decoders) decoder_list->push_back(d);
    return prepare_dict_adapter<PeanutLayer>(request, method_,
                                             {record,
                                              {},
                                              {{PeanutLayer::A, a},
                                               {PeanutLayer::B, b},
                                               {PeanutLayer::ENCODERS, encoder_list},
                                               {PeanutLayer::DECODERS, decoder_list}}});
  }
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, PeanutConfig& config) {
  return std::make_unique<PeanutBuilder>(method, config);
}

}  // namespace peft::detail::peanut
