// Poly (Python PEFT's tuners/poly): each layer holds n_skills LoRA pairs, split into n_splits heads
// (poly_lora_A: n_splits x n_skills x in/n_splits x r, poly_lora_B: n_splits x n_skills x r x out/n_splits), and a
// router per adapter (poly_router.<adapter>.module_logits: n_tasks x n_splits * n_skills). For each sample the
// router's row of its task gives, per head, weights over the skills (sigmoid, normalised; a RelaxedBernoulli sample
// in training); the mixed A and B give y = W x + (x A) B / r. The task ids come from the peft::TaskIds guard.

#include <cmath>
#include <limits>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/log1p.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/zeros.h>
#include <torch/nn/module.h>

#include <peft/error.h>
#include <peft/tuners/poly/task_ids.h>

#include "tuners/poly/task_routing.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/poly/layer.h"

namespace peft::detail::poly {
namespace {

/// Python's PolyRouter: the per-task logits of the skills of each head.
class PolyRouterImpl : public torch::nn::Module {
 public:
  explicit PolyRouterImpl(at::Tensor logits) : torch::nn::Module("PolyRouter") {
    register_parameter("module_logits", std::move(logits));
  }
};

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  int64_t r = 0, n_tasks = 0, n_skills = 0, n_splits = 0;
};

class PolyLayer final : public DictAdapterLayer {
 public:
  enum Index : size_t { LORA_A, LORA_B, ROUTER };

  PolyLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, {{"poly_lora_A"}, {"poly_lora_B"}, {"poly_router", true}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const c10::ScalarType previous = x.scalar_type();
    at::Tensor result = base_forward(x);
    if (active.empty()) return result;
    const TaskIds::Routing* tasks = current_task_ids();
    if (!tasks || !tasks->layers.count(this)) {
      throw ConfigError("task_ids should not be None. A Poly forward needs each sample's task id: run it while a "
                        "peft::TaskIds guard for this model is alive.");
    }
    if (x.dim() != 3) {
      throw ConfigError("Poly layers multiply batched matrices, as Python PEFT's do: the input must be (batch, "
                        "sequence, features), got " + std::to_string(x.dim()) + " dimensions.");
    }
    if (tasks->task_ids.size(0) != x.size(0)) {
      throw ConfigError("TaskIds holds " + std::to_string(tasks->task_ids.size(0)) + " task ids but the batch has " +
                        std::to_string(x.size(0)) + " samples.");
    }
    const BaseLayer& layer = base_layer();
    at::Tensor input = x;
    for (const auto& item : active) {
      const auto& record = static_cast<const Record&>(*item);
      const at::Tensor weights = mixing_weights(record, tasks->task_ids, base.is_training());
      const int64_t batch = weights.size(0);
      const at::Tensor a = at::einsum("bqs,qsdr->bqdr", {weights, param(LORA_A, record.name)})
                               .reshape({batch, layer.in_features, record.r});
      const at::Tensor b = at::einsum("bqs,qsrd->bqrd", {weights, param(LORA_B, record.name)})
                               .transpose(1, 2)
                               .reshape({batch, record.r, layer.out_features});
      // Python casts the input to the adapter's dtype and keeps it for the following adapters.
      input = input.to(a.scalar_type());
      const at::Tensor update = at::bmm(at::bmm(input, a), b) / static_cast<double>(record.r);
      result = result + update.to(result.scalar_type());
    }
    return result.to(previous);
  }

  at::Tensor delta_weight(const AdapterRecord&) const override {
    throw MergeError("POLY adapters cannot be merged into the base weights: the update depends on each sample's task "
                     "(Python PEFT's Poly layers cannot merge either).");
  }

 private:
  /// (batch, n_splits, n_skills): per sample and head, the weights of the skills for the sample's task.
  at::Tensor mixing_weights(const Record& record, const at::Tensor& task_ids, bool training) const {
    const auto params = module(ROUTER, record.name)->named_parameters(/*recurse=*/false);
    const at::Tensor logits_all = *params.find("module_logits");
    const int64_t highest = task_ids.max().item<int64_t>();
    if (highest >= record.n_tasks) {
      throw ConfigError("Only " + std::to_string(record.n_tasks) + " tasks available. Found task id = " +
                        std::to_string(highest));
    }
    at::Tensor logits = logits_all.index({task_ids.to(logits_all.device())}).view({-1, record.n_splits, record.n_skills});
    at::Tensor probabilities;
    if (training) {
      // torch.distributions.RelaxedBernoulli(temperature=1, logits).rsample(), with its clamps.
      const double eps = dtype_eps(logits.scalar_type()), tiny = dtype_tiny(logits.scalar_type());
      const at::Tensor p = at::sigmoid(logits).clamp(eps, 1 - eps);
      const at::Tensor u = at::rand(logits.sizes(), logits.options().requires_grad(false)).clamp(eps, 1 - eps);
      const at::Tensor z = u.log() - at::log1p(-u) + p.log() - at::log1p(-p);
      probabilities = at::sigmoid(z).clamp(tiny, 1 - eps);
    } else {
      probabilities = at::sigmoid(logits);
    }
    return probabilities / (probabilities.sum(-1, /*keepdim=*/true) + 1e-12);
  }

  static double dtype_eps(c10::ScalarType type) {
    switch (type) {
      case at::kDouble: return std::numeric_limits<double>::epsilon();
      case at::kHalf: return 0.0009765625;
      case at::kBFloat16: return 0.0078125;
      default: return std::numeric_limits<float>::epsilon();
    }
  }

  static double dtype_tiny(c10::ScalarType type) {
    switch (type) {
      case at::kDouble: return std::numeric_limits<double>::min();
      case at::kHalf: return 6.103515625e-05;
      case at::kBFloat16: return 1.1754943508222875e-38;
      default: return std::numeric_limits<float>::min();
    }
  }
};

/// kaiming_uniform_(a=sqrt(5)) of a new float32 (rows, cols) CPU tensor: nn.Linear's default, as Python draws it.
at::Tensor linear_default(int64_t rows, int64_t cols) {
  const double a = std::sqrt(5.0);
  const double gain = std::sqrt(2.0 / (1 + a * a));
  const double bound = std::sqrt(3.0) * (gain / std::sqrt(static_cast<double>(cols)));
  return at::empty({rows, cols}, at::TensorOptions().dtype(at::kFloat)).uniform_(-bound, bound);
}

class PolyBuilder final : public BuilderOf<PolyConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    const int64_t r = config_.r(), skills = config_.n_skills(), splits = config_.n_splits(), tasks = config_.n_tasks();
    for (const auto& [what, features] : {std::pair<const char*, int64_t>{"in_features", base.in_features},
                                         std::pair<const char*, int64_t>{"out_features", base.out_features}}) {
      if (features % splits != 0) {
        throw ConfigError("`" + std::string(what) + "` " + std::to_string(features) + " must be divisible by `n_splits` " +
                          std::to_string(splits) + " (layer '" + request.module_name + "')");
      }
    }
    auto record = std::make_shared<Record>(request.adapter_name);
    record->r = r;
    record->n_tasks = tasks;
    record->n_skills = skills;
    record->n_splits = splits;

    const int64_t in = base.in_features / splits, out = base.out_features / splits;
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor a = at::empty({splits, skills, in, r}, options);
    at::Tensor b = at::empty({splits, skills, r, out}, options);
    at::Tensor logits = at::empty({tasks, splits * skills}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      // Python's draws, in its order: A per skill and split, B likewise (or zeros), then the router's logits.
      for (int64_t skill = 0; skill < skills; ++skill) {
        for (int64_t split = 0; split < splits; ++split) a[split][skill].copy_(linear_default(r, in).t());
      }
      if (config_.init_weights()) {
        b.zero_();
      } else {
        for (int64_t skill = 0; skill < skills; ++skill) {
          for (int64_t split = 0; split < splits; ++split) b[split][skill].copy_(linear_default(out, r).t());
        }
      }
      logits.copy_(at::empty(logits.sizes(), at::TensorOptions().dtype(at::kFloat)).uniform_(-1e-3, 1e-3));
    }
    auto router = std::make_shared<PolyRouterImpl>(logits);
    return prepare_dict_adapter<PolyLayer>(
        request, method_, {record, {{PolyLayer::LORA_A, a}, {PolyLayer::LORA_B, b}}, {{PolyLayer::ROUTER, router}}});
  }
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, PolyConfig& config) {
  return std::make_unique<PolyBuilder>(method, config);
}

}  // namespace peft::detail::poly
