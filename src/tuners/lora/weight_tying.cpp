#include "tuners/lora/weight_tying.h"

#include <algorithm>
#include <set>

#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

#include <peft/error.h>

#include "core/matching.h"
#include "core/python_regex.h"
#include "core/tensor_slots.h"
#include "tuners/lora/layer.h"
#include "tuners/modules_to_save/layer.h"
#include "tuners/trainable_tokens/layer.h"

namespace peft::detail::lora {
namespace {

using trainable_tokens::find_tied_group;
using trainable_tokens::TiedGroup;

// Python's re.match(rf"(^|.*\.){m}($|\..*)", key), with m the config's entry.
bool entry_names(const std::string& entry, const std::string& key) {
  return PythonRegex("(^|.*\\.)" + entry + "($|\\..*)", PythonRegex::Anchor::Start, "ensure_weight_tying").matches(key);
}

std::string python_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

TyingPlan plan_weight_tying(LoraConfig& config, const std::vector<LayerRequest>& targets,
                            const std::vector<std::pair<std::string, torch::nn::Module*>>& layers) {
  TyingPlan plan;
  const TiedGroup group = find_tied_group(layers);
  if (group.embedding.empty()) {
    if (config.ensure_weight_tying()) {
      TORCH_WARN("You have requested `ensure_weight_tying`, but no tied modules were found in the model");
    }
    return plan;
  }
  auto targeted = [&](const std::string& name) {
    return std::any_of(targets.begin(), targets.end(), [&](const LayerRequest& t) { return t.module_name == name; });
  };
  const auto& to_save = config.modules_to_save();
  auto saved = [&](const std::string& name) { return to_save && matches_modules_to_save(*to_save, name); };
  bool embedding_targeted = targeted(group.embedding), embedding_saved = saved(group.embedding);
  for (const std::string& name : group.tied) {
    embedding_targeted |= targeted(name);
    embedding_saved |= saved(name);
  }

  if (!config.ensure_weight_tying()) {
    if (embedding_targeted || embedding_saved) {
      TORCH_WARN("Model has `tie_word_embeddings=True` and a tied layer is part of the adapter, but "
                 "`ensure_weight_tying` is not set to True. This can lead to complications, for example when merging "
                 "the adapter or converting your model to formats other than safetensors. Check the discussion here: "
                 "https://github.com/huggingface/peft/issues/2777");
    }
    return plan;
  }
  plan.embedding = group.embedding;
  if (embedding_saved) {
    // Python's _add_modules_to_save_to_tie: the embedding is saved whole, the tied layers use its copy.
    std::vector<std::string> entries = *to_save;
    if (std::find(entries.begin(), entries.end(), group.embedding) == entries.end()) entries.push_back(group.embedding);
    for (const std::string& key : group.tied) {
      auto it = std::find_if(entries.begin(), entries.end(), [&](const std::string& m) { return entry_names(m, key); });
      if (it != entries.end()) entries.erase(it);
    }
    config.modules_to_save(entries);
    plan.tied_copies = group.tied;
    return plan;
  }
  if (embedding_targeted) {
    // Python's _add_targets_to_tie: LoRA on the embedding, whose factors the tied layers use.
    const TargetModules& current = config.target_modules();
    if (current.is_regex()) {
      config.target_modules(TargetModules::regex("(?:" + current.pattern() + "|^" + python_escape(group.embedding) + "$)"));
    } else if (current.is_names()) {
      std::set<std::string> names(current.names().begin(), current.names().end());
      names.insert(group.embedding);
      for (const std::string& key : group.tied) {
        auto it = std::find_if(names.begin(), names.end(), [&](const std::string& m) { return entry_names(m, key); });
        if (it != names.end()) names.erase(it);
      }
      config.target_modules(TargetModules(std::vector<std::string>(names.begin(), names.end())));
    }
    if (!targeted(group.embedding)) plan.extra_targets.push_back(group.embedding);
    for (const std::string& name : group.tied) {
      plan.tied_targets[name] = group.embedding;
      if (!targeted(name)) plan.extra_targets.push_back(name);
    }
    return plan;
  }
  TORCH_WARN("You have requested `ensure_weight_tying`, but no tied modules are added in either `modules_to_save` or "
             "`target_modules`");
  return plan;
}

void tie_to_embedding(LoraAdapter& tied, const LoraAdapter& embedding, const LoraConfig& config, const std::string& name) {
  if (!tied.linear_A) {
    throw UnsupportedLayerError("ensure_weight_tying: '" + name + "' shares the input embedding's weight but is not a "
                                "Linear layer; Python PEFT ties LoRA adapters of Linear layers only.");
  }
  if (tied.use_dora || tied.lora_bias) {
    throw ConfigError("ensure_weight_tying: '" + name + "' would share the input embedding's LoRA factors, which " +
                      std::string(tied.use_dora ? "DoRA's magnitude" : "lora_bias") + " cannot; set ensure_weight_tying "
                      "to false or leave the embedding out of target_modules.");
  }
  if (!config.init_lora_weights().is_bool()) {
    throw ConfigError("ensure_weight_tying: tied LoRA factors ('" + name + "') support init_lora_weights true or false "
                      "only (Python re-initialises the shared factors through the tied layer).");
  }
  const at::Tensor A = embedding.embedding_B.detach().t();
  const at::Tensor B = embedding.embedding_A.detach().t();
  if (A.sizes() != tied.linear_A->weight.sizes() || B.sizes() != tied.linear_B->weight.sizes()) {
    throw ConfigError("ensure_weight_tying: '" + name + "' cannot use the input embedding's LoRA factors: their shapes " +
                      "do not fit (the ranks must agree; check rank_pattern).");
  }
  replace_tensor(*tied.A, "weight", A);
  replace_tensor(*tied.B, "weight", B);
  if (config.init_lora_weights().is_bool() && config.init_lora_weights().enabled() && !A.device().is_meta()) {
    // Python's update_layer initialises the tied Linear after tying, which writes into the embedding's factors.
    at::NoGradGuard no_grad;
    kaiming_default(A);
    B.zero_();
  }
}

std::vector<AuxiliaryChange> tied_copies(const AuxiliaryRequest& request, const TyingPlan& plan) {
  std::vector<AuxiliaryChange> out;
  if (plan.tied_copies.empty()) return out;
  const std::shared_ptr<torch::nn::Module> embedding_copy = request.saved_copy(plan.embedding);
  TORCH_INTERNAL_ASSERT(embedding_copy, "ensure_weight_tying: no modules_to_save copy of '", plan.embedding, "'");
  const at::Tensor weight = describe_layer(*embedding_copy)->weight();
  for (const std::string& name : plan.tied_copies) {
    auto it = std::find_if(request.modules.begin(), request.modules.end(), [&](const auto& m) { return m.first == name; });
    TORCH_INTERNAL_ASSERT(it != request.modules.end(), "no module '", name, "'");
    const std::optional<BaseLayer> base = describe_layer(*it->second);
    AdapterLayer* existing = adapter_layer_of(*it->second);
    if (existing && !is_modules_to_save(*existing)) {
      throw UnsupportedLayerError("modules_to_save with ensure_weight_tying: '" + name + "' already carries " +
                                  existing->peft_type() + " adapters; a layer cannot be both adapted and saved whole.");
    }
    out.push_back({prepare_modules_to_save(*base, name, request.adapter_name, request.config, existing, weight), name,
                   name, it->second, base->kind});
  }
  return out;
}

}  // namespace peft::detail::lora
