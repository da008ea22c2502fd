#include <peft/tuners/adalora/rank_allocator.h>

#include <cmath>

#include <ATen/ops/cat.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/kthvalue.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <peft/error.h>

#include "core/model_adapters.h"
#include "tuners/adalora/layer.h"

namespace peft {
namespace {

using detail::adalora::AdaLoraLayerRef;
namespace slot = detail::adalora;

std::string score_key(const std::string& layer, const char* tensor) { return layer + "." + tensor; }

}  // namespace

AdaLoraRankAllocator::AdaLoraRankAllocator(torch::nn::Module& model, std::string adapter_name)
    : model_(model), adapter_(std::move(adapter_name)) {
  const std::shared_ptr<const PeftConfig> config = detail::require_adapter(model_, adapter_);
  const auto* adalora = dynamic_cast<const AdaLoraConfig*>(config.get());
  if (!adalora) throw ConfigError("Adapter '" + adapter_ + "' is " + config->peft_type() + ", not ADALORA.");
  if (adalora->inference_mode()) {
    throw ConfigError("Adapter '" + adapter_ + "' was injected with inference_mode=true; AdaLoRA's rank allocation "
                      "needs the trainable adapter.");
  }
  config_ = *adalora;
  if (!(config_.beta1() > 0 && config_.beta1() < 1) || !(config_.beta2() > 0 && config_.beta2() < 1)) {
    throw ConfigError("AdaLoRA needs 0 < beta1, beta2 < 1, got beta1=" + std::to_string(config_.beta1()) +
                      ", beta2=" + std::to_string(config_.beta2()));
  }
  const std::vector<AdaLoraLayerRef> layers = detail::adalora::adalora_layers(model_, adapter_);
  for (const auto& ref : layers) initial_budget_ += ref.layer->param(slot::A, adapter_).size(0);
  target_budget_ = config_.target_r() * static_cast<int64_t>(layers.size());
}

std::pair<int64_t, bool> AdaLoraRankAllocator::budget_schedule(int64_t step) const {
  const int64_t tinit = config_.tinit(), tfinal = config_.tfinal(), total = *config_.total_step();
  if (step <= tinit) return {initial_budget_, false};
  if (step > total - tfinal) return {target_budget_, true};
  const double progress = 1.0 - static_cast<double>(step - tinit) / static_cast<double>(total - tfinal - tinit);
  const auto budget = static_cast<int64_t>(static_cast<double>(initial_budget_ - target_budget_) * std::pow(progress, 3) +
                                           static_cast<double>(target_budget_));
  return {budget, step % config_.deltaT() == 0};
}

void AdaLoraRankAllocator::update_importance() {
  at::NoGradGuard no_grad;
  const double b1 = config_.beta1(), b2 = config_.beta2();
  for (const AdaLoraLayerRef& ref : detail::adalora::adalora_layers(model_, adapter_)) {
    for (auto [index, name] : {std::pair{slot::A, "lora_A"}, {slot::B, "lora_B"}, {slot::E, "lora_E"}}) {
      const at::Tensor& p = ref.layer->param(index, adapter_);
      if (!p.grad().defined()) {
        throw ConfigError("AdaLoRA update_and_allocate: " + ref.name + "." + name + "." + adapter_ +
                          " has no gradient; call it after loss.backward() and before zero_grad().");
      }
      Scores& s = scores_[score_key(ref.name, name)];
      if (!s.exp_avg_ipt.defined()) {
        s.exp_avg_ipt = at::zeros_like(p);
        s.exp_avg_unc = at::zeros_like(p);
      }
      s.ipt = (p * p.grad()).abs().detach();
      s.exp_avg_ipt = b1 * s.exp_avg_ipt + (1 - b1) * s.ipt;
      s.exp_avg_unc = b2 * s.exp_avg_unc + (1 - b2) * (s.ipt - s.exp_avg_ipt).abs();
    }
  }
}

AdaLoraRankPattern AdaLoraRankAllocator::mask_to_budget(int64_t budget) {
  const std::vector<AdaLoraLayerRef> layers = detail::adalora::adalora_layers(model_, adapter_);
  auto element_score = [&](const std::string& key) -> at::Tensor {
    auto it = scores_.find(key);
    if (it == scores_.end()) {
      throw ConfigError("AdaLoRA: no importance scores for " + key + "; update_and_allocate must run on the steps "
                        "before total_step - tfinal first.");
    }
    return it->second.exp_avg_ipt * it->second.exp_avg_unc;
  };
  // Importance of each rank: its singular value's score plus the mean scores of its row of A and column of B.
  std::vector<at::Tensor> triplets, all;
  for (const AdaLoraLayerRef& ref : layers) {
    const at::Tensor a = at::mean(element_score(score_key(ref.name, "lora_A")), {1}, true);
    const at::Tensor b = at::mean(element_score(score_key(ref.name, "lora_B")), {0}, false).view({-1, 1});
    const at::Tensor e = element_score(score_key(ref.name, "lora_E"));
    const at::Tensor sum = e.view(-1) + at::cat({a, b}, 1).sum(1).view(-1);
    triplets.push_back(sum.view({-1, 1}));
    all.push_back(sum.view(-1));
  }
  AdaLoraRankPattern pattern;
  const int64_t k = initial_budget_ - budget;
  at::NoGradGuard no_grad;
  const double threshold =
      k > 0 && !all.empty() ? std::get<0>(at::kthvalue(at::cat(all), k)).item<double>() : -INFINITY;
  for (size_t i = 0; i < layers.size(); ++i) {
    const at::Tensor masked = triplets[i] <= threshold;
    const at::Tensor& e = layers[i].layer->param(slot::E, adapter_);
    e.masked_fill_(masked.to(e.device()), 0.0);
    const at::Tensor kept = masked.logical_not().view(-1).to(at::kCPU);
    std::vector<bool> flags;
    for (int64_t j = 0; j < kept.size(0); ++j) flags.push_back(kept[j].item<bool>());
    pattern[layers[i].name + ".lora_E"] = std::move(flags);
  }
  return pattern;
}

void AdaLoraRankAllocator::mask_with(const AdaLoraRankPattern& pattern) {
  at::NoGradGuard no_grad;
  for (const AdaLoraLayerRef& ref : detail::adalora::adalora_layers(model_, adapter_)) {
    auto it = pattern.find(ref.name + ".lora_E");
    if (it == pattern.end()) continue;
    const at::Tensor& e = ref.layer->param(slot::E, adapter_);
    for (size_t j = 0; j < it->second.size() && static_cast<int64_t>(j) < e.size(0); ++j) {
      if (!it->second[j]) e[static_cast<int64_t>(j)].fill_(0.0);
    }
  }
}

void AdaLoraRankAllocator::store_pattern(const AdaLoraRankPattern& pattern) {
  config_.rank_pattern(pattern);
  auto updated = std::make_shared<const AdaLoraConfig>(config_);
  for (const detail::AdaptedLayer& layer : detail::adapted_layers(model_)) {
    if (layer.adapters->has_adapter(adapter_)) layer.adapters->replace_config(adapter_, updated);
  }
}

void AdaLoraRankAllocator::update_and_allocate(int64_t global_step) {
  const int64_t boundary = *config_.total_step() - config_.tfinal();
  if (global_step < boundary) {
    update_importance();
    const auto [budget, mask] = budget_schedule(global_step);
    if (mask) store_pattern(mask_to_budget(budget));
  } else if (global_step == boundary) {
    store_pattern(mask_to_budget(budget_schedule(global_step).first));
    scores_.clear();
  } else if (config_.rank_pattern()) {
    mask_with(*config_.rank_pattern());
  }
}

at::Tensor AdaLoraRankAllocator::orthogonal_regularization() const {
  at::Tensor total;
  int64_t count = 0;
  for (const AdaLoraLayerRef& ref : detail::adalora::adalora_layers(model_, adapter_)) {
    for (const auto index : {slot::A, slot::B}) {
      const at::Tensor& p = ref.layer->param(index, adapter_);
      const at::Tensor cov = index == slot::A ? at::matmul(p, p.t()) : at::matmul(p.t(), p);
      const at::Tensor term = (cov - at::eye(cov.size(0), cov.options())).norm();
      total = total.defined() ? total + term : term;
      ++count;
    }
  }
  if (!total.defined()) return at::zeros({});
  return config_.orth_reg_weight() * total / static_cast<double>(count);
}

}  // namespace peft
