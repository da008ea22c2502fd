// DeFT (Python PEFT's tuners/deft): W' = (I - P_proj) W + Q_P (scaling * R), with P_proj = Q_P right^T from
// the learned direction P (out x r): "relu" takes Q_P = P, right = relu(P); "qr" takes Q_P = right = Q of
// P's QR decomposition. PaRa (para) drops the R term. All of it is computed in float32, as in Python.
//
// The additive update factors as Q_P (scaling * R - M) with M = right^T W (r x in), the only part that
// depends on the base weight. A merge keeps M, so unmerging subtracts exactly what was added although the
// weight has changed meanwhile.

#include <algorithm>
#include <map>
#include <mutex>

#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_qr.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/relu.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <peft/tuners/deft/config.h>

#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/deft/layer.h"

namespace peft::detail::deft {
namespace {

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  bool qr = false;      // decomposition_method "qr" (else "relu")
  bool para = false;    // no injection term
  double scaling = 1;   // of the injection term: alpha / r, or 1
  torch::nn::DropoutImpl* dropout = nullptr;  // owned by deft_dropout; null for Identity
};

/// (Q_P, right) in float32.
std::pair<at::Tensor, at::Tensor> project(const at::Tensor& direction, bool qr) {
  const at::Tensor p = direction.to(at::kFloat);
  if (qr) {
    const at::Tensor q = std::get<0>(at::linalg_qr(p));
    return {q, q};
  }
  return {p, at::relu(p)};
}

class DeftLayer final : public DictAdapterLayer {
 public:
  DeftLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, {{"deft_P"}, {"deft_R"}, {"deft_dropout", true, false}}) {}

  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module& base, const std::vector<std::string>& names,
                                               bool safe_merge) override;

  void remove_adapter(torch::nn::Module& base, const std::string& name) override {
    DictAdapterLayer::remove_adapter(base, name);
    std::lock_guard<std::mutex> lock(mutex_);
    merge_factors_.erase(name);
  }

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const c10::ScalarType previous = x.scalar_type();
    at::Tensor result = base_forward(x).to(at::kFloat);
    // The removal term needs W x without the bias; it is taken from the base output before any adapter.
    const at::Tensor bias = base_layer().bias();
    const at::Tensor base_product = bias.defined() ? result - bias.to(at::kFloat) : result;
    const at::Tensor input = x.to(at::kFloat);
    for (const auto& r : active) {
      const auto& record = static_cast<const Record&>(*r);
      const auto [q, right] = project(param(0, record.name), record.qr);
      result = result - at::matmul(at::matmul(base_product, right), q.t());
      if (record.para) continue;
      const at::Tensor injection = param(1, record.name).to(at::kFloat) * record.scaling;
      const at::Tensor dropped = record.dropout ? record.dropout->forward(input) : input;
      result = result + at::matmul(at::linear(dropped, injection), q.t());
    }
    return result.to(previous);
  }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    // The factor of the weight before this merge (prepare_merge took it), as Python's merge does, so merging
    // several adapters at once adds their independent updates.
    return {weight + delta_from(record, pending_factors_.at(record.name)), bias};
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& record) const override {
    // Called with mutex_ held.
    auto kept = merge_factors_.find(record.name);
    // Without a kept factor (none is expected), Python's fallback: the factor of the weight as it is now.
    const at::Tensor factor = kept != merge_factors_.end() ? kept->second : merge_factor(record, weight);
    if (kept != merge_factors_.end()) merge_factors_.erase(kept);
    return {weight - delta_from(record, factor), bias};
  }

 private:
  friend class PendingDeftMerge;

  /// right^T W for the logical (out, in) weight, float32.
  at::Tensor merge_factor(const AdapterRecord& r, const at::Tensor& weight) const {
    const auto& record = static_cast<const Record&>(r);
    const at::Tensor logical = base_layer().fan_in_fan_out ? weight.t() : weight;
    const at::Tensor right = project(param(0, record.name), record.qr).second;
    return at::matmul(right.t(), logical.to(at::kFloat));
  }

  /// The additive update in the weight's layout and dtype, from a factor right^T W.
  at::Tensor delta_from(const AdapterRecord& r, const at::Tensor& factor) const {
    const auto& record = static_cast<const Record&>(r);
    const at::Tensor q = project(param(0, record.name), record.qr).first;
    const at::Tensor f = factor.to(q.device());
    at::Tensor delta = record.para ? -at::matmul(q, f)
                                   : at::matmul(q, param(1, record.name).to(at::kFloat) * record.scaling - f);
    if (base_layer().fan_in_fan_out) delta = delta.t();
    return delta.to(base_layer().weight().scalar_type());
  }

  // The factors of the merge being prepared; only set during prepare_merge.
  std::map<std::string, at::Tensor> pending_factors_;
  // The factor each merged adapter was merged with, until it is unmerged.
  mutable std::map<std::string, at::Tensor> merge_factors_;
};

// A merge that, once committed, keeps the factors it merged with for the unmerge.
class PendingDeftMerge final : public PendingChange {
 public:
  PendingDeftMerge(std::unique_ptr<PendingChange> merge, DeftLayer& layer, std::map<std::string, at::Tensor> factors)
      : merge_(std::move(merge)), layer_(layer), factors_(std::move(factors)) {}

  void commit() override {
    merge_->commit();
    std::lock_guard<std::mutex> lock(layer_.mutex_);
    for (auto& [name, factor] : factors_) layer_.merge_factors_[name] = std::move(factor);
  }

 private:
  std::unique_ptr<PendingChange> merge_;
  DeftLayer& layer_;
  std::map<std::string, at::Tensor> factors_;
};

std::unique_ptr<PendingChange> DeftLayer::prepare_merge(torch::nn::Module& base, const std::vector<std::string>& names,
                                                        bool safe_merge) {
  const std::vector<std::string> merged = merged_adapters();
  const at::Tensor weight = base_layer().weight().detach();
  std::map<std::string, at::Tensor> factors;
  if (!weight.device().is_meta()) {
    at::NoGradGuard no_grad;
    for (const std::string& name : names) {
      const std::shared_ptr<const AdapterRecord> found = record(name);
      if (found && std::find(merged.begin(), merged.end(), name) == merged.end()) {
        factors[name] = merge_factor(*found, weight);
      }
    }
  }
  pending_factors_ = factors;
  std::unique_ptr<PendingChange> merge;
  try {
    merge = DictAdapterLayer::prepare_merge(base, names, safe_merge);
  } catch (...) {
    pending_factors_.clear();
    throw;
  }
  pending_factors_.clear();
  if (!merge) return nullptr;
  return std::make_unique<PendingDeftMerge>(std::move(merge), *this, std::move(factors));
}

class DeftBuilder final : public BuilderOf<DeftConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    // P_proj has rank at most out_features (and QR gives at most that many columns).
    const int64_t r = std::min(config_.r(), base.out_features);
    auto record = std::make_shared<Record>(request.adapter_name);
    record->qr = config_.decomposition_method() == "qr";
    record->para = config_.para();
    // Python: alpha / r when alpha is set and not 0.
    record->scaling = config_.alpha() && *config_.alpha() != 0 ? static_cast<double>(*config_.alpha()) / r : 1.0;

    std::shared_ptr<torch::nn::Module> dropout;
    if (config_.deft_dropout() > 0) {
      auto module = std::make_shared<torch::nn::DropoutImpl>(torch::nn::DropoutOptions(config_.deft_dropout()));
      record->dropout = module.get();
      dropout = module;
    } else {
      dropout = std::make_shared<torch::nn::IdentityImpl>();
    }

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    const at::Tensor direction = at::empty({base.out_features, r}, options);
    at::Tensor injection;
    if (!record->para) injection = at::empty({r, base.in_features}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      direction.normal_(0.0, 0.02);
      if (injection.defined() && config_.init_weights()) {
        // R = right^T W / scaling makes the update Q_P (scaling R - right^T W) zero: the identity at the start.
        const at::Tensor right = project(direction, record->qr).second;
        const at::Tensor weight = base.weight().detach().to(at::kFloat);
        const at::Tensor logical = base.fan_in_fan_out ? weight.t() : weight;
        injection.copy_(at::matmul(right.t(), logical.to(right.device())) / record->scaling);
      } else if (injection.defined()) {
        injection.normal_(0.0, 0.02 * config_.init_scale());
      }
    }
    DictAdapterLayer::NewAdapter adapter{record, {{0, direction}}, {{2, dropout}}};
    if (injection.defined()) adapter.tensors.emplace_back(1, injection);
    return prepare_dict_adapter<DeftLayer>(request, method_, std::move(adapter));
  }
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, DeftConfig& config) {
  return std::make_unique<DeftBuilder>(method, config);
}

}  // namespace peft::detail::deft
