#include <peft/tuners/adamss/asa.h>

#include <cmath>
#include <limits>

#include <ATen/TensorOperators.h>
#include <ATen/ops/kthvalue.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros_like.h>

#include <peft/error.h>

#include "core/model_adapters.h"
#include "tuners/adamss/layer.h"

namespace peft {
namespace {

namespace ad = detail::adamss;

}  // namespace

AdamssAsa::AdamssAsa(torch::nn::Module& model, std::string adapter_name)
    : model_(model), adapter_(std::move(adapter_name)) {
  const std::shared_ptr<const PeftConfig> config = detail::require_adapter(model_, adapter_);
  const auto* adamss = dynamic_cast<const AdamssConfig*>(config.get());
  if (!adamss) throw ConfigError("Adapter '" + adapter_ + "' is " + config->peft_type() + ", not ADAMSS.");
  if (!adamss->use_asa()) {
    throw ConfigError("Adapter '" + adapter_ + "' was injected with use_asa=false; AdaMSS's subspace allocation "
                      "needs use_asa=true.");
  }
  config_ = *adamss;
  for (const ad::AdamssLayerRef& ref : ad::adamss_layers(model_, adapter_)) {
    const int64_t n = ad::subspace_count(*ref.layer, adapter_);
    total_ += n;
    averages_[ref.name].resize(static_cast<size_t>(n));
  }
}

std::optional<int64_t> AdamssAsa::schedule(int64_t step) const {
  if (total_ == 0 || step < config_.init_warmup()) return std::nullopt;
  const int64_t target = config_.asa_target_subspaces();
  if (step > config_.final_warmup()) return target;
  double mul = 1.0 - static_cast<double>(step - config_.init_warmup()) /
                         static_cast<double>(config_.final_warmup() - config_.init_warmup());
  mul = std::max(0.0, std::min(1.0, mul));
  return static_cast<int64_t>(static_cast<double>(target) +
                              static_cast<double>(total_ - target) * std::pow(mul, config_.asa_schedule_exponent()));
}

void AdamssAsa::update_importance() {
  at::NoGradGuard no_grad;
  const double bi = config_.asa_importance_beta(), bu = config_.asa_uncertainty_beta();
  for (const ad::AdamssLayerRef& ref : ad::adamss_layers(model_, adapter_)) {
    std::vector<Averages>& layer = averages_[ref.name];
    const int64_t n = ad::subspace_count(*ref.layer, adapter_);
    if (static_cast<int64_t>(layer.size()) < n) layer.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      Averages& avg = layer[static_cast<size_t>(i)];
      for (auto [container, ipt, unc] : {std::tuple{ad::kA, &avg.ipt_a, &avg.unc_a}, {ad::kB, &avg.ipt_b, &avg.unc_b}}) {
        const at::Tensor p = ad::subspace_tensor(*ref.layer, container, adapter_, i);
        const at::Tensor& grad = p.grad();
        if (!grad.defined()) continue;
        if (!ipt->defined()) {
          *ipt = at::zeros_like(p);
          *unc = at::zeros_like(p);
        }
        const at::Tensor current = (p * grad).abs().detach();
        const at::Tensor diff = (current - *ipt).abs();
        unc->mul_(bu).add_(diff, 1 - bu);
        ipt->mul_(bi).add_(current, 1 - bi);
      }
    }
  }
}

void AdamssAsa::mask_to(int64_t target) {
  struct Scored {
    const detail::DictAdapterLayer* layer;
    int64_t index;
    at::Tensor score;
  };
  std::vector<Scored> scored;
  for (const ad::AdamssLayerRef& ref : ad::adamss_layers(model_, adapter_)) {
    const std::vector<Averages>& layer = averages_[ref.name];
    for (size_t i = 0; i < layer.size(); ++i) {
      const Averages& avg = layer[i];
      if (!avg.ipt_a.defined() || !avg.ipt_b.defined()) continue;
      scored.push_back({ref.layer, static_cast<int64_t>(i),
                        at::mean(avg.ipt_a * avg.unc_a) + at::mean(avg.ipt_b * avg.unc_b)});
    }
  }
  if (scored.empty()) return;
  double threshold = -std::numeric_limits<double>::infinity();
  if (target < static_cast<int64_t>(scored.size())) {
    std::vector<at::Tensor> all;
    for (const Scored& s : scored) all.push_back(s.score);
    threshold = -std::get<0>(at::kthvalue(-at::stack(all), target)).item<double>();
  }
  for (const Scored& s : scored) {
    const bool active = s.score.item<double>() > threshold;
    for (size_t container : {ad::kA, ad::kB}) {
      at::Tensor p = ad::subspace_tensor(*s.layer, container, adapter_, s.index);
      p.set_requires_grad(active);
      if (!active) p.mutable_grad() = at::Tensor();
    }
  }
}

void AdamssAsa::update_and_allocate(int64_t global_step) {
  const bool within = config_.init_warmup() <= global_step && global_step <= config_.final_warmup();
  if (!within || ad::adamss_layers(model_, adapter_).empty()) return;
  update_importance();
  if (global_step % config_.mask_interval() == 0) {
    if (const std::optional<int64_t> target = schedule(global_step)) mask_to(*target);
    for (auto& [name, layer] : averages_) {
      for (Averages& avg : layer) avg = Averages{};
    }
  }
}

}  // namespace peft
