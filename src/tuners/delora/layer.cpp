// DeLoRA (Python PEFT's tuners/delora): y = W x + b + B diag(lambda / r / (|A_i| |B^i|)) A (w_norm * x), where
// |A_i| is the norm of A's row i and |B^i| of B's column i (each at least 1e-4), and w_norm the base weight's
// column norms when the adapter was created (kept as the buffer delora_w_norm, saved with the adapter). The
// update dW = B diag(...) A diag(w_norm) is what merging adds to W.

#include <cmath>

#include <ATen/ops/clamp.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/norm.h>
#include <ATen/ops/ones.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <peft/tuners/delora/config.h>

#include "core/matching.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/delora/layer.h"

namespace peft::detail::delora {
namespace {

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  int64_t r = 0;
  torch::nn::DropoutImpl* dropout = nullptr;  // owned by delora_dropout; null for Identity
};

// Container indices.
constexpr size_t kDropout = 0, kA = 1, kB = 2, kLambda = 3, kWNorm = 4;

class DeloraLayer final : public DictAdapterLayer {
 public:
  DeloraLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method,
                         {{"delora_dropout", true, false},
                          {"delora_A"},
                          {"delora_B"},
                          {"delora_lambda"},
                          {"delora_w_norm", false, true, true}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const c10::ScalarType previous = x.scalar_type();
    const at::Tensor base_out = base_forward(x);
    at::Tensor added;
    for (const auto& r : active) {
      const auto& record = static_cast<const Record&>(*r);
      const at::Tensor& a = param(kA, record.name);
      const at::Tensor& b = param(kB, record.name);
      const at::Tensor input = x.to(a.scalar_type());
      const at::Tensor dropped = record.dropout ? record.dropout->forward(input) : input;
      const at::Tensor h = at::linear(dropped * param(kWNorm, record.name), a) * scaling(record);
      const at::Tensor update = at::linear(h, b);
      added = added.defined() ? added + update : update;
    }
    const at::Tensor result = added.defined() ? base_out + added.to(base_out.scalar_type()) : base_out;
    return result.to(previous);
  }

  at::Tensor delta_weight(const AdapterRecord& r) const override {
    const auto& record = static_cast<const Record&>(r);
    const at::Tensor a = param(kA, record.name).detach(), b = param(kB, record.name).detach();
    const at::Tensor delta = at::matmul(b * scaling(record).detach(), a) * param(kWNorm, record.name).unsqueeze(0);
    return delta.to(base_layer().weight().device());
  }

 private:
  /// lambda / r / (|A_i| |B^i|), one factor per rank.
  at::Tensor scaling(const Record& record) const {
    const at::Tensor a_norm = at::clamp(param(kA, record.name).norm(2, {1}), 1e-4);
    const at::Tensor b_norm = at::clamp(param(kB, record.name).norm(2, {0}), 1e-4);
    return param(kLambda, record.name) / static_cast<double>(record.r) / (a_norm * b_norm);
  }
};

class DeloraBuilder final : public BuilderOf<DeloraConfig> {
 public:
  DeloraBuilder(const Method& method, DeloraConfig& config)
      : BuilderOf(method, config), ranks_(config.rank_pattern(), "rank_pattern"),
        lambdas_(config.lambda_pattern(), "lambda_pattern") {}

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    auto record = std::make_shared<Record>(request.adapter_name);
    record->r = ranks_.lookup(request.module_name, config_.r());
    positive()("r", record->r);
    const double lambda = lambdas_.lookup(request.module_name, config_.delora_lambda());

    std::shared_ptr<torch::nn::Module> dropout;
    if (config_.module_dropout() > 0) {
      auto module = std::make_shared<torch::nn::DropoutImpl>(torch::nn::DropoutOptions(config_.module_dropout()));
      record->dropout = module.get();
      dropout = module;
    } else {
      dropout = std::make_shared<torch::nn::IdentityImpl>();
    }

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor a = at::empty({record->r, base.in_features}, options);
    at::Tensor b = at::empty({base.out_features, record->r}, options);
    at::Tensor lambda_param = at::empty({1}, options);
    at::Tensor w_norm = at::empty({base.in_features}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      torch::nn::init::kaiming_uniform_(a, std::sqrt(5.0));
      if (config_.init_weights()) {
        b.zero_();
      } else {
        torch::nn::init::kaiming_uniform_(b, std::sqrt(5.0));
      }
      lambda_param.fill_(lambda);
      // The base weight's column norms, fixed for the adapter's life.
      w_norm.copy_(base.weight().detach().norm(2, {0}));
    }
    DictAdapterLayer::NewAdapter adapter{
        record, {{kA, a}, {kB, b}, {kLambda, lambda_param}, {kWNorm, w_norm}}, {{kDropout, dropout}}};
    return prepare_dict_adapter<DeloraLayer>(request, method_, std::move(adapter));
  }

 private:
  PatternLookup<int64_t> ranks_;
  PatternLookup<double> lambdas_;
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, DeloraConfig& config) {
  return std::make_unique<DeloraBuilder>(method, config);
}

}  // namespace peft::detail::delora
