// inject_adapter_in_model: Python PEFT's BaseTuner.inject_adapter, in three phases so a failure leaves
// the model untouched: (1) decide which layers to adapt and report config problems, (2) prepare every
// layer's new modules (allocation, initialisation, shape checks), (3) commit all of them at once.

#include <algorithm>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include <c10/util/Exception.h>
#include <torch/nn/modules/activation.h>

#include <peft/error.h>
#include <peft/inject.h>

#include "core/inject_internal.h"
#include "core/json_config.h"
#include "core/matching.h"
#include "core/model_adapters.h"
#include "core/module_walk.h"
#include "core/method.h"
#include "routing/routing_check.h"
#include "tuners/modules_to_save/layer.h"

namespace peft::detail {
namespace {

const std::string kPeftPrefix = "base_model.model.";

std::string strip_peft_prefix(const std::string& key) {
  return key.compare(0, kPeftPrefix.size(), kPeftPrefix) == 0 ? key.substr(kPeftPrefix.size()) : key;
}

std::string join_sorted(std::set<std::string> names) {
  std::string out = "[";
  bool first = true;
  for (const auto& name : names) {
    out += (first ? "'" : ", '") + name + "'";
    first = false;
  }
  return out + "]";
}

std::string layer_note(const PeftConfig& config) {
  std::string note;
  if (config.layers_to_transform()) {
    note += " Note: You specified 'layers_to_transform': [";
    for (size_t i = 0; i < config.layers_to_transform()->size(); ++i) {
      note += (i ? ", " : "") + std::to_string((*config.layers_to_transform())[i]);
    }
    note += "].";
  }
  if (config.layers_pattern()) {
    note += " You also specified 'layers_pattern': ";
    const auto& patterns = *config.layers_pattern();
    if (patterns.size() == 1) {
      note += patterns[0];
    } else {
      note += "[";
      for (size_t i = 0; i < patterns.size(); ++i) note += (i ? ", '" : "'") + patterns[i] + "'";
      note += "]";
    }
    note += ".";
  }
  return note;
}

// Python's _maybe_include_all_linear_layers: "all-linear" becomes the names of every Linear-like layer.
void expand_all_linear(PeftConfig& config, torch::nn::Module& model) {
  if (!config.target_modules().is_all_linear()) return;
  std::vector<std::string> names;
  walk_modules(model, [&](const ModuleVisit& v) {
    if (v.name.empty()) return;
    auto layer = describe_layer(v.module);
    if (layer && layer->is_linear()) names.push_back(v.name);
  });
  ConfigFields::set_target_modules(config, TargetModules(std::move(names)));
}

// Ranks come from the config; a state dict trained with another rank is named here, before anything changes.
void check_state_dict_shapes(const StateDict& state_dict, const std::vector<std::string>& names,
                             const std::vector<std::unique_ptr<PendingChange>>& pending, const PeftConfig& config,
                             const Method& method) {
  std::unordered_map<std::string, const at::Tensor*> by_key;
  for (const auto& item : state_dict) by_key[strip_peft_prefix(item.key())] = &item.value();
  std::string problems;
  std::unordered_set<std::string> shared_checked;
  for (size_t i = 0; i < names.size(); ++i) {
    const auto integer_dtypes = pending[i]->checkpoint_integer_dtypes();
    for (const auto& [key, shape] : pending[i]->checkpoint_shapes()) {
      std::vector<std::string> full_keys{names[i] + "." + key};
      // A shared tensor is checked once under its model-level key, where the config saves it (and under each
      // layer's key too where checkpoints hold those).
      if (const auto* shared = method.shared_container(key)) {
        if (!shared->saved(config)) continue;
        if (!shared->layer_keys) full_keys.clear();
        const std::string model_key = shared->checkpoint_key(names[i]);
        if (shared_checked.insert(model_key).second) full_keys.push_back(model_key);
      }
      for (const std::string& full_key : full_keys) {
        auto it = by_key.find(full_key);
        if (it == by_key.end()) continue;
        auto integer = std::find_if(integer_dtypes.begin(), integer_dtypes.end(), [&k = key](const auto& e) { return e.first == k; });
        std::ostringstream line;
        if (it->second->sizes().vec() != shape) {
          line << "\n\t" << it->first << " has shape " << it->second->sizes() << ", the config gives " << at::IntArrayRef(shape);
        } else if (integer != integer_dtypes.end()) {
          if (it->second->scalar_type() != integer->second) {
            line << "\n\t" << it->first << " holds " << it->second->scalar_type() << " values, the adapter's indices are "
                 << integer->second;
          }
        } else if (!it->second->is_floating_point()) {
          line << "\n\t" << it->first << " holds " << it->second->scalar_type() << " values, adapter weights are floating point";
        }
        problems += line.str();
      }
    }
  }
  if (!problems.empty()) {
    throw StateDictError("The state_dict does not fit the adapter " + config.peft_type() +
                         " config describes (ranks come from the config: set `r`, or `rank_pattern`, to the ranks "
                         "the adapter was trained with):" + problems);
  }
}

struct Candidate {
  std::string name;
  torch::nn::Module* module;
};

// The MultiheadAttention `name` is the out_proj of, or nullptr.
torch::nn::Module* attention_of_out_proj(torch::nn::Module& model, const std::vector<Candidate>& modules,
                                         const std::string& name) {
  const auto dot = name.rfind('.');
  if (name.compare(dot == std::string::npos ? 0 : dot + 1, std::string::npos, "out_proj") != 0) return nullptr;
  const std::string parent_name = dot == std::string::npos ? std::string() : name.substr(0, dot);
  torch::nn::Module* parent = &model;
  if (!parent_name.empty()) {
    auto it = std::find_if(modules.begin(), modules.end(), [&](const Candidate& c) { return c.name == parent_name; });
    if (it == modules.end()) return nullptr;
    parent = it->module;
  }
  return dynamic_cast<torch::nn::MultiheadAttentionImpl*>(parent) ? parent : nullptr;
}

// Where checkpoints keep a layer's adapter: Python's lora.MultiheadAttention holds its out_proj under base_layer.
std::string checkpoint_name(torch::nn::Module& model, const std::vector<Candidate>& modules, const std::string& name) {
  if (!attention_of_out_proj(model, modules, name)) return name;
  return name.substr(0, name.size() - std::string("out_proj").size()) + "base_layer.out_proj";
}

// LibTorch's MultiheadAttention passes out_proj's tensors to F::multi_head_attention_forward and never calls
// out_proj's forward: an adapter or a modules_to_save copy there would be silently ignored, unless the attention
// itself is adapted in the same injection (`adapted`), whose forward then adds out_proj's adapter.
void check_forward_is_called(torch::nn::Module& model, const std::vector<Candidate>& modules, const std::string& name,
                             const std::unordered_set<const torch::nn::Module*>& adapted) {
  torch::nn::Module* attention = attention_of_out_proj(model, modules, name);
  if (attention && !adapted.count(attention)) {
    const std::string parent = name.substr(0, name.rfind('.') == std::string::npos ? 0 : name.rfind('.'));
    throw UnsupportedLayerError(
        "'" + name + "' belongs to a torch::nn::MultiheadAttention, which reads its tensors directly and never calls "
        "its forward, so an adapter there would have no effect. Target the attention itself" +
        (parent.empty() ? std::string() : " ('" + parent + "')") +
        ": LoRA adapts its in_proj and out_proj together, as Python PEFT does. Or exclude '" + name +
        "' with `exclude_modules`.");
  }
}

}  // namespace

void inject_checked(const PeftConfig& user_config, torch::nn::Module& model, const std::string& adapter_name,
                    bool low_cpu_mem_usage, const std::optional<StateDict>& state_dict, const StateDict* weights) {
  const Method* method = find_method(user_config.peft_type());
  if (!method) {
    throw ConfigError("`inject_adapter_in_model` does not support " + user_config.peft_type() + " yet.");
  }
  if (const std::string refusal = method->injection_refusal(); !refusal.empty()) throw ConfigError(refusal);
  if (adapter_name.empty() || adapter_name.find('.') != std::string::npos) {
    throw AdapterNameError("Adapter name '" + adapter_name +
                           "' is not usable: it must be non-empty and contain no '.' (it becomes a module name).");
  }
  std::shared_ptr<PeftConfig> config = user_config.clone();
  config->validate();

  // ---- adapters already in the model. Only what this adapter needs is looked at, so adding the N-th
  // adapter costs the same as adding the first.
  const std::vector<AdaptedLayer> existing_layers = adapted_layers(model);
  for (const AdaptedLayer& layer : existing_layers) {
    if (layer.adapters->has_adapter(adapter_name)) {
      throw AdapterNameError("An adapter named '" + adapter_name + "' is already in the model (adapters: " +
                             collect_adapters(model).names_text() + "). Choose another name, or delete it first.");
    }
  }
  if (!existing_layers.empty()) {
    TORCH_WARN("Already found a `peft_config` attribute in the model. This will lead to having multiple adapters in "
               "the model. Make sure to know what you are doing!");
  }
  if (config->bias_mode() != "none" || method->checks_other_adapters()) {
    const std::vector<std::shared_ptr<const PeftConfig>> existing_configs = collect_adapters(model).configs();
    const bool other_with_bias = std::any_of(existing_configs.begin(), existing_configs.end(),
                                             [](const auto& c) { return c->bias_mode() != "none"; });
    if (config->bias_mode() != "none" && other_with_bias) {
      throw ConfigError(method->peft_type() +
                        " supports only 1 adapter with bias. When using multiple adapters, set bias to 'none' for "
                        "all adapters.");
    }
    method->check_new_adapter(*config, existing_configs);
  }

  const bool targets_parameters = method->targets_parameters(*config);
  if (state_dict && targets_parameters) {
    throw ConfigError("Trying to inject a PEFT adapter from a state_dict but the PEFT config uses `target_parameters`. "
                      "This is not supported -- when using `target_parameters`, please inject the adapter without the "
                      "state_dict.");
  }
  if (!state_dict && !config->target_modules().is_set() && !targets_parameters) {
    ConfigFields::set_target_modules(*config, method->default_target_modules());
  }
  if (!state_dict && !config->target_modules().is_set() && !targets_parameters) {
    throw ConfigError("Please specify `target_modules` or `target_parameters`in `peft_config`");
  }
  // Python's _prepare_model (LoRA's layer_replication) changes the model before matching; undone unless committed.
  const std::unique_ptr<ModelPreparation> preparation = method->prepare_model(*config, model);
  expand_all_linear(*config, model);

  // ---- phase 1: which layers
  std::vector<Candidate> modules;
  walk_modules(model, [&](const ModuleVisit& v) {
    if (!v.name.empty()) modules.push_back({v.name, &v.module});
  });

  std::vector<Candidate> targets;
  std::vector<std::string> excluded, unmatched;
  if (state_dict) {
    // The layers the state dict has tensors for: "<module>.<prefix>..." names <module> (Python's rule),
    // with or without save_pretrained's "base_model.model." prefix.
    const std::string marker = "." + method->prefix();
    std::unordered_set<std::string> from_keys;
    for (const auto& item : *state_dict) {
      if (method->shared_container_of_key(item.key())) continue;  // a model-level tensor, no layer's
      std::string key = strip_peft_prefix(item.key());
      const auto pos = key.rfind(marker);
      from_keys.insert(pos == std::string::npos ? key : key.substr(0, pos));
    }
    std::set<std::string> by_keys, by_config;
    std::optional<TargetMatcher> matcher;
    if (config->target_modules().is_set()) matcher.emplace(*config);
    for (const Candidate& c : modules) {
      if (from_keys.count(c.name)) {
        targets.push_back(c);
        by_keys.insert(c.name);
      } else {
        unmatched.push_back(c.name);
      }
      if (matcher && matcher->match(c.name) == MatchResult::Match) by_config.insert(c.name);
    }
    if (matcher) {
      std::set<std::string> only_config, only_keys;
      std::set_difference(by_config.begin(), by_config.end(), by_keys.begin(), by_keys.end(),
                          std::inserter(only_config, only_config.end()));
      std::set_difference(by_keys.begin(), by_keys.end(), by_config.begin(), by_config.end(),
                          std::inserter(only_keys, only_keys.end()));
      if (!only_config.empty() || !only_keys.empty()) {
        std::string message =
            "While injecting the PEFT adapters, an inconsistency was discovered between the PEFT config and the "
            "provided state_dict. This is not necessarily an issue and can be ignored if this was the intent. ";
        if (!only_config.empty()) message += "The PEFT config contained these additional target modules: " + join_sorted(only_config) + ". ";
        if (!only_keys.empty()) message += "The state_dict contained these additional target modules: " + join_sorted(only_keys) + ". ";
        TORCH_WARN(message);
      }
    }
    // The layers actually adapted become the config's targets, so the saved config selects them again.
    if (!config->target_modules().is_set()) {
      std::vector<std::string> names(by_keys.begin(), by_keys.end());
      ConfigFields::set_target_modules(*config, TargetModules(std::move(names)));
    }
  } else if (config->target_modules().is_set()) {
    const TargetMatcher matcher(*config);
    for (const Candidate& c : modules) {
      switch (matcher.match(c.name)) {
        case MatchResult::Match: targets.push_back(c); break;
        case MatchResult::Excluded: excluded.push_back(c.name); break;
        case MatchResult::NoMatch: unmatched.push_back(c.name); break;
      }
    }
  }

  // With parameter targets the builder decides once it has matched them (prepare_auxiliary).
  if (targets.empty() && !targets_parameters) {
    if (!excluded.empty() && unmatched.empty()) {
      throw NoMatchingPeftModuleError(
          "All modules were excluded. This is likely unintended. Check your `target_modules`, `exclude_modules` and "
          "`modules_to_save` configuration.");
    }
    if (excluded.empty()) {
      std::ostringstream targets_text;
      targets_text << config->target_modules();
      if (state_dict) {
        throw NoMatchingPeftModuleError(
            "No module of the model is named by the keys of the given state_dict (for example '" +
            (state_dict->is_empty() ? std::string() : state_dict->begin()->key()) +
            "'). Check that the state dict belongs to this model and adapter method.");
      }
      throw NoMatchingPeftModuleError("Target modules " + targets_text.str() +
                                      " not found in the base model. Please check the target modules and try again." +
                                      layer_note(*config));
    }
    throw NoMatchingPeftModuleError(
        "No modules were targeted for adaptation. This might be caused by a combination of mismatched target modules "
        "and excluded modules. Please check your `target_modules` and `exclude_modules` configuration. You may also "
        "have only targeted modules that are marked to be saved (`modules_to_save`)." + layer_note(*config));
  }
  if (config->exclude_modules().is_set() && excluded.empty() &&
      !(config->exclude_modules().is_names() && config->exclude_modules().names().empty())) {
    std::ostringstream text;
    text << config->exclude_modules();
    TORCH_WARN("You have passed exclude_modules=", text.str(),
               " but no modules were excluded. Please check that exclude_modules was set correctly.");
  }

  // ---- phase 2: prepare every change; nothing in the model changes yet
  std::shared_ptr<const PeftConfig> shared_config = config;
  std::unique_ptr<AdapterBuilder> builder = method->start_injection(*config);
  std::vector<std::unique_ptr<PendingChange>> pending;
  std::vector<std::string> pending_names;
  std::set<LayerKind> routed_kinds;
  std::unordered_set<const torch::nn::Module*> adapted;
  std::vector<LayerRequest> requests;
  auto add_request = [&](const Candidate& target) {
    check_forward_is_called(model, modules, target.name, adapted);
    std::optional<BaseLayer> base = describe_layer(*target.module);
    if (!base || !method->supports(base->kind)) {
      throw UnsupportedLayerError(method->unsupported_layer_message(*target.module, target.name));
    }
    AdapterLayer* existing = adapter_layer_of(*target.module);
    if (existing && existing->peft_type() != method->peft_type()) {
      throw UnsupportedLayerError("Cannot add a " + method->peft_type() + " adapter to '" + target.name +
                                  "': it already carries " + existing->peft_type() +
                                  " adapters, and peft-cpp keeps one adapter method per layer.");
    }
    requests.push_back(LayerRequest{shared_config, adapter_name, target.name, *base, existing, low_cpu_mem_usage});
    if (needs_routing(*target.module, base->kind)) routed_kinds.insert(base->kind);
    adapted.insert(target.module);
  };
  for (const Candidate& target : targets) add_request(target);
  // Layers tied to the targets (sharing their weight) come along where the method says so.
  std::vector<std::pair<std::string, torch::nn::Module*>> named_modules;
  for (const Candidate& c : modules) named_modules.emplace_back(c.name, c.module);
  for (const std::string& name : builder->tied_layers(requests, named_modules)) {
    auto it = std::find_if(modules.begin(), modules.end(), [&](const Candidate& c) { return c.name == name; });
    if (it != modules.end() && !adapted.count(it->module)) add_request(*it);
  }
  // Methods whose layers share tensors (VeRA's projections, Lily's groups) size and create them here.
  builder->plan(requests);
  for (const LayerRequest& request : requests) {
    pending.push_back(builder->prepare(request));
    pending_names.push_back(checkpoint_name(model, modules, request.module_name));
  }
  std::unordered_map<std::string, const PendingChange*> saved_copies;
  if (const auto& modules_to_save = config->modules_to_save()) {
    for (const Candidate& c : modules) {
      if (!matches_modules_to_save(*modules_to_save, c.name)) continue;
      if (adapted.count(c.module)) {
        throw ConfigError("modules_to_save: '" + c.name + "' is also selected by target_modules; a layer cannot be "
                          "both adapted and saved whole. Adjust `modules_to_save` or `target_modules`.");
      }
      check_forward_is_called(model, modules, c.name, {});
      std::optional<BaseLayer> base = describe_layer(*c.module);
      if (base && base->kind == LayerKind::MultiheadAttention) {
        throw UnsupportedLayerError("modules_to_save: '" + c.name + "' is a torch::nn::MultiheadAttention, whose "
                                    "forward a trainable copy cannot take over yet; list its parts' owners instead "
                                    "or adapt it with LoRA.");
      }
      if (!base) {
        throw UnsupportedLayerError("modules_to_save: '" + c.name + "' (" + short_repr(*c.module) +
                                    ") is not a layer peft-cpp can route; list torch::nn::Linear, Embedding, "
                                    "Conv1d/2d/3d or LayerNorm layers in `modules_to_save`");
      }
      pending.push_back(prepare_modules_to_save(*base, c.name, adapter_name, shared_config, adapter_layer_of(*c.module)));
      pending_names.push_back(c.name);
      saved_copies[c.name] = pending.back().get();
      if (needs_routing(*c.module, base->kind)) routed_kinds.insert(base->kind);
    }
  }
  // What the adapter brings along beyond targets and copies (LoRA's trainable tokens, tied copies).
  AuxiliaryRequest aux_request{model, named_modules, requests, shared_config, adapter_name, low_cpu_mem_usage,
                               [&](const std::string& name) -> std::shared_ptr<torch::nn::Module> {
                                 auto it = saved_copies.find(name);
                                 return it == saved_copies.end() ? nullptr : prepared_copy(*it->second);
                               }};
  for (AuxiliaryChange& aux : builder->prepare_auxiliary(aux_request)) {
    check_forward_is_called(model, modules, aux.module_name, {});
    if (needs_routing(*aux.module, aux.kind)) routed_kinds.insert(aux.kind);
    pending.push_back(std::move(aux.change));
    pending_names.push_back(aux.checkpoint_name);
  }
  if (weights) check_state_dict_shapes(*weights, pending_names, pending, *config, *method);
  for (LayerKind kind : routed_kinds) check_routing(kind);

  // ---- phase 3: commit
  if (preparation) preparation->keep();
  for (auto& change : pending) change->commit();
  activate_after_injection(model, adapter_name, *config);
}

}  // namespace peft::detail

namespace peft {

void inject_adapter_in_model(const PeftConfig& config, ModuleRef model, const std::string& adapter_name,
                             bool low_cpu_mem_usage, const std::optional<StateDict>& state_dict) {
  detail::inject_checked(config, model.get(), adapter_name, low_cpu_mem_usage, state_dict,
                         state_dict ? &*state_dict : nullptr);
}

}  // namespace peft
