// add_weighted_adapter: Python PEFT's LoraModel.add_weighted_adapter (a new LoRA adapter combined from others).

#include <peft/tuners/lora/weighted_adapter.h>

#include <cmath>
#include <set>

#include <ATen/ops/diag.h>
#include <ATen/ops/linalg_svd.h>
#include <ATen/ops/quantile.h>
#include <ATen/ops/cat.h>
#include <ATen/core/grad_mode.h>

#include <peft/error.h>
#include <peft/inject.h>
#include <peft/lifecycle.h>
#include <peft/tuners/lora/config.h>

#include "core/model_adapters.h"
#include "tuners/lora/layer.h"
#include "tuners/lora/task_merging.h"

namespace peft {
namespace {

using detail::lora::LoraAdapter;
using detail::lora::LoraLayer;

const std::set<std::string>& combination_types() {
  static const std::set<std::string> types{"svd",        "linear",          "cat",           "ties",
                                           "ties_svd",   "dare_linear",     "dare_ties",     "dare_linear_svd",
                                           "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"};
  return types;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

struct Plan {
  std::string combination_type;
  int64_t rank = 0;
  LoraConfig config;
};

// Python's _check_add_weighted_adapter, plus what peft-cpp refuses rather than computing something else.
Plan plan(torch::nn::Module& model, const std::vector<std::string>& adapters, const std::vector<double>& weights,
          const std::string& adapter_name, const WeightedAdapterOptions& options) {
  if (adapters.empty()) throw ConfigError("add_weighted_adapter needs at least one adapter.");
  if (weights.size() != adapters.size()) {
    throw ConfigError("add_weighted_adapter: " + std::to_string(adapters.size()) + " adapters but " +
                      std::to_string(weights.size()) + " weights.");
  }
  const std::vector<std::string> existing = adapter_names(model);
  if (std::find(existing.begin(), existing.end(), adapter_name) != existing.end()) {
    // Python returns without doing anything; that would leave the caller with an adapter it did not ask for.
    throw AdapterNameError("add_weighted_adapter: an adapter named '" + adapter_name + "' already exists.");
  }
  std::vector<LoraConfig> configs;
  for (const std::string& adapter : adapters) {
    if (std::find(existing.begin(), existing.end(), adapter) == existing.end()) {
      throw AdapterNameError("Adapter " + adapter + " does not exist");
    }
    const auto config = std::dynamic_pointer_cast<const LoraConfig>(adapter_config(model, adapter));
    if (!config) throw ConfigError("add_weighted_adapter combines LoRA adapters; '" + adapter + "' is not one.");
    if (config->use_dora()) {
      throw ConfigError("add_weighted_adapter does not combine DoRA adapters ('" + adapter +
                        "'): their magnitude vectors have no weighted form.");
    }
    if (config->trainable_token_indices() || config->alora_invocation_tokens() || config->arrow_config()) {
      throw ConfigError("add_weighted_adapter does not combine '" + adapter + "': its trainable tokens, aLoRA "
                        "invocation or Arrow routing have no weighted form.");
    }
    if (config->target_parameters() && !config->target_parameters()->empty()) {
      throw ConfigError("add_weighted_adapter does not combine '" + adapter + "': it adapts parameters "
                        "(target_parameters), whose deltas live in the parameters themselves.");
    }
    if (config->use_bdlora()) {
      throw ConfigError("add_weighted_adapter does not combine BD-LoRA adapters ('" + adapter +
                        "'): combining block-diagonal factors is not supported.");
    }
    configs.push_back(*config);
  }
  for (const detail::AdaptedLayer& layer : detail::adapted_layers(model)) {
    if (layer.adapters->peft_type() != "MODULES_TO_SAVE") continue;
    int64_t count = 0;
    for (const std::string& adapter : adapters) count += layer.adapters->has_adapter(adapter);
    if (count > 1) {
      throw ConfigError("Cannot add weighted adapters if they target the same module with modules_to_save, but found "
                        "1 such instance(s) ('" + layer.name + "').");
    }
  }

  Plan out;
  out.combination_type = adapters.size() == 1 ? "linear" : options.combination_type;
  const std::string& type = out.combination_type;
  if (!combination_types().count(type)) throw ConfigError("Invalid combination_type: " + type);
  std::vector<int64_t> ranks;
  for (const LoraConfig& c : configs) {
    int64_t r = c.r();
    for (const auto& [pattern, value] : c.rank_pattern()) r = std::max(r, value);
    ranks.push_back(r);
  }
  if (type == "cat") {
    for (int64_t r : ranks) out.rank += r;
  } else if (ends_with(type, "svd")) {
    out.rank = options.svd_rank ? *options.svd_rank : *std::max_element(ranks.begin(), ranks.end());
    if (out.rank <= 0) throw ConfigError("svd_rank must be positive, got " + std::to_string(out.rank));
  } else {
    if (std::set<int64_t>(ranks.begin(), ranks.end()).size() != 1) {
      throw ConfigError("All adapters must have the same r value when using combination_type linear, ties, dare_ties "
                        "or dare_linear.");
    }
    out.rank = ranks.front();
  }
  const bool needs_density = type != "svd" && type != "linear" && type != "cat";
  if (needs_density && (!options.density || *options.density < 0 || *options.density > 1)) {
    throw ConfigError("combination_type " + type + " needs `density`, the fraction of values kept, in [0, 1].");
  }
  if (options.majority_sign_method != "total" && options.majority_sign_method != "frequency") {
    throw ConfigError("majority_sign_method must be \"total\" or \"frequency\", got \"" +
                      options.majority_sign_method + "\".");
  }
  if (options.svd_clamp && (*options.svd_clamp < 0 || *options.svd_clamp > 1)) {
    throw ConfigError("svd_clamp is a quantile, in [0, 1].");
  }

  // The new config: the first adapter's, with the new rank, and the union of the targets.
  TargetModules targets;
  const bool all_names = std::all_of(configs.begin(), configs.end(), [](const LoraConfig& c) {
    return c.target_modules().is_names();
  });
  const bool all_regex = std::all_of(configs.begin(), configs.end(), [](const LoraConfig& c) {
    return c.target_modules().is_regex();
  });
  if (all_names) {
    std::vector<std::string> names;
    for (const LoraConfig& c : configs) {
      for (const std::string& n : c.target_modules().names()) {
        if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
      }
    }
    targets = TargetModules(std::move(names));
  } else if (all_regex) {
    std::string pattern;
    for (const LoraConfig& c : configs) pattern += (pattern.empty() ? "(" : "|(") + c.target_modules().pattern() + ")";
    targets = TargetModules::regex(pattern);
  } else {
    throw ConfigError("all adapter configs should follow the same target modules type. Combining adapters with "
                      "`target_modules` type being a mix of list/set and string is not supported.");
  }
  out.config = configs.front();
  out.config.r(out.rank).lora_alpha(static_cast<double>(out.rank)).target_modules(targets).rank_pattern({}).alpha_pattern(
      {});
  return out;
}

// Python's get_delta_weight for the layer (an attention's out_proj merges its delta twice; this is the single one).
at::Tensor delta_of(const LoraLayer& layer, const LoraAdapter& a) {
  const at::Tensor delta = layer.delta_weight(a);
  return layer.doubled_delta() ? delta / 2 : delta;
}

// Python's _svd_generalized_task_arithmetic_weighted_adapter: returns (A, B).
std::pair<at::Tensor, at::Tensor> svd_combination(const LoraLayer& layer,
                                                  const std::vector<std::pair<const LoraAdapter*, double>>& parts,
                                                  const std::string& type, int64_t rank, const at::Tensor& new_A,
                                                  const at::Tensor& new_B, const WeightedAdapterOptions& options) {
  std::vector<at::Tensor> deltas;
  std::vector<double> weights;
  for (const auto& [a, weight] : parts) {
    deltas.push_back(delta_of(layer, *a));
    weights.push_back(weight * a->scaling);  // Python scales the (already scaled) deltas once more
  }
  using namespace detail::lora;
  const double density = options.density.value_or(1.0);
  at::Tensor delta;
  if (type == "svd") {
    delta = task_arithmetic(deltas, weights);
  } else if (type == "ties_svd") {
    delta = ties(deltas, weights, density, options.majority_sign_method);
  } else if (type == "dare_linear_svd") {
    delta = dare_linear(deltas, weights, density);
  } else if (type == "dare_ties_svd") {
    delta = dare_ties(deltas, weights, density, options.majority_sign_method);
  } else {
    delta = magnitude_prune(deltas, weights, density);
  }
  const bool conv2d = layer.kind() == detail::LayerKind::Conv2d;
  if (conv2d) {
    const at::Tensor w = layer.base_layer().weight();
    delta = w.size(2) == 1 && w.size(3) == 1 ? delta.squeeze() : delta.flatten(1);
  } else if (layer.kind() != detail::LayerKind::Linear && layer.kind() != detail::LayerKind::LinearLike &&
             layer.kind() != detail::LayerKind::Embedding && layer.kind() != detail::LayerKind::MultiheadAttention) {
    throw ConfigError("add_weighted_adapter with combination_type " + type + " cannot combine the adapters of '" +
                      layer.module_name() + "' (a " + detail::layer_kind_name(layer.kind()) +
                      " layer): Python PEFT's SVD combination handles Linear, Embedding and Conv2d layers.");
  }
  if (layer.fan_in_fan_out() || layer.kind() == detail::LayerKind::Embedding) delta = delta.t();
  auto [U, S, Vh] = at::linalg_svd(delta, options.svd_full_matrices);
  U = U.slice(1, 0, rank);
  S = S.slice(0, 0, rank);
  U = at::matmul(U, at::diag(S));
  Vh = Vh.slice(0, 0, rank);
  if (options.svd_clamp) {
    const at::Tensor dist = at::cat({U.flatten(), Vh.flatten()});
    const at::Tensor high = at::quantile(dist, *options.svd_clamp);
    U = U.clamp(-high, high);
    Vh = Vh.clamp(-high, high);
  }
  if (conv2d) {
    U = U.reshape(new_B.sizes());
    Vh = Vh.reshape(new_A.sizes());
  }
  return {Vh, U};
}

// Python's _generalized_task_arithmetic_weighted_adapter: A and B combined separately, the weight split between them.
std::pair<at::Tensor, at::Tensor> factor_combination(const LoraLayer& layer,
                                                     const std::vector<std::pair<const LoraAdapter*, double>>& parts,
                                                     const std::string& type, const WeightedAdapterOptions& options) {
  std::vector<double> weights_A, weights_B;
  std::vector<at::Tensor> As, Bs;
  for (const auto& [a, weight] : parts) {
    const double scaled = weight * a->scaling;
    const double root = std::sqrt(std::abs(scaled));
    weights_A.push_back(scaled >= 0 ? root : -root);  // the sign on one side only
    weights_B.push_back(root);
    const auto [A, B] = layer.lora_weights(*a);
    As.push_back(A.detach());
    Bs.push_back(B.detach());
  }
  const c10::ScalarType dtype = As.front().scalar_type();
  using namespace detail::lora;
  const double density = options.density.value_or(1.0);
  auto combine = [&](const std::vector<at::Tensor>& tensors, const std::vector<double>& weights) {
    if (type == "linear") return task_arithmetic(tensors, weights);
    if (type == "ties") return ties(tensors, weights, density, options.majority_sign_method);
    if (type == "dare_linear") return dare_linear(tensors, weights, density);
    if (type == "dare_ties") return dare_ties(tensors, weights, density, options.majority_sign_method);
    return magnitude_prune(tensors, weights, density);
  };
  at::Tensor A = combine(As, weights_A);
  at::Tensor B = combine(Bs, weights_B);
  return {A.to(dtype), B.to(dtype)};
}

}  // namespace

void add_weighted_adapter(ModuleRef model_ref, const std::vector<std::string>& adapters,
                          const std::vector<double>& weights, const std::string& adapter_name,
                          const WeightedAdapterOptions& options) {
  torch::nn::Module& model = model_ref.get();
  Plan p = plan(model, adapters, weights, adapter_name, options);
  const std::vector<std::string> active = active_adapters(model);

  // The new adapter's values are written below; an init that rewrites the base weight (PiSSA, ...) must not run.
  LoraConfig injected = p.config;
  if (!injected.init_lora_weights().is_bool()) injected.init_lora_weights(true);
  inject_adapter_in_model(injected, model, adapter_name);
  try {
    at::NoGradGuard no_grad;
    for (const detail::AdaptedLayer& adapted : detail::adapted_layers(model)) {
      auto* layer = dynamic_cast<LoraLayer*>(adapted.adapters);
      if (!layer) continue;
      const std::shared_ptr<const LoraAdapter> fresh = layer->adapter(adapter_name);
      if (!fresh) continue;
      const auto [new_A, new_B] = layer->lora_weights(*fresh);
      std::vector<std::pair<const LoraAdapter*, double>> parts;
      std::vector<std::shared_ptr<const LoraAdapter>> keep;
      for (std::size_t i = 0; i < adapters.size(); ++i) {
        if (auto a = layer->adapter(adapters[i])) {
          parts.emplace_back(a.get(), weights[i]);
          keep.push_back(std::move(a));
        }
      }
      if (parts.empty()) throw Error("No matching LoRAs found for '" + adapted.name + "'.");
      new_A.zero_();
      new_B.zero_();
      const std::string& type = p.combination_type;
      if (type == "cat") {
        std::vector<at::Tensor> As, Bs;
        for (const auto& [a, weight] : parts) {
          const auto [A, B] = layer->lora_weights(*a);
          As.push_back(A * weight * a->scaling);
          Bs.push_back(B);
        }
        const at::Tensor A = at::cat(As, 0), B = at::cat(Bs, 1);
        new_A.slice(0, 0, A.size(0)).copy_(A);
        new_B.slice(1, 0, B.size(1)).copy_(B);
        continue;
      }
      const auto [A, B] = ends_with(type, "svd")
                              ? svd_combination(*layer, parts, type, p.rank, new_A, new_B, options)
                              : factor_combination(*layer, parts, type, options);
      if (A.sizes() != new_A.sizes() || B.sizes() != new_B.sizes()) {
        throw Error("add_weighted_adapter: the combination for '" + adapted.name + "' has shapes " +
                    c10::str(A.sizes()) + " / " + c10::str(B.sizes()) + ", the new adapter " +
                    c10::str(new_A.sizes()) + " / " + c10::str(new_B.sizes()) +
                    " (a rank larger than the layer allows?)");
      }
      new_A.copy_(A);
      new_B.copy_(B);
    }
  } catch (...) {
    delete_adapter(model, adapter_name);
    if (!active.empty()) set_adapter(model, active);
    throw;
  }
  // As Python: the new adapter is frozen and the active adapters stay as they were.
  if (!active.empty()) set_adapter(model, active);
  set_requires_grad(model, {adapter_name}, false);
}

}  // namespace peft
