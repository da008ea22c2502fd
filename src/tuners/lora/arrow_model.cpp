// create_arrow_model (Python PEFT's tuners/lora/arrow.py): loading the experts, Python's compatibility checks
// (check_loaded_lora_compatibility_arrow, ensure_adapters_target_linear_layers_only) and adding the router.

#include <peft/tuners/lora/arrow.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include <peft/error.h>
#include <peft/inject.h>
#include <peft/lifecycle.h>

#include "core/model_adapters.h"
#include "tuners/lora/arrow.h"
#include "tuners/lora/layer.h"

namespace peft {
namespace {

using detail::LayerKind;
using detail::lora::LoraLayer;

// Python's repr of a list of strings: ['a', 'b'].
std::string python_list(const std::set<std::string>& names) {
  std::string out = "[";
  for (const std::string& name : names) out += (out.size() > 1 ? ", '" : "'") + name + "'";
  return out + "]";
}

// Python's repr of torch.Size: torch.Size([4, 10]).
std::string python_size(at::IntArrayRef sizes) {
  std::string out = "torch.Size([";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "])";
}

// The layers where Python's checks see an adapter: LoRA layers holding it in lora_A (so not Embeddings, whose
// adapters live in lora_embedding_A).
template <class Fn>
void for_each_lora_A(const torch::nn::Module& model, const std::string& adapter, Fn&& fn) {
  for (const detail::AdaptedLayer& layer : detail::adapted_layers(model)) {
    const auto* lora = dynamic_cast<const LoraLayer*>(layer.adapters);
    if (!lora || lora->peft_type() != "LORA") continue;
    const auto record = lora->adapter(adapter);
    if (!record || !record->A) continue;
    fn(layer, *lora, *record);
  }
}

struct AdapterShape {
  std::optional<int64_t> r;
  std::string shapes = "None";  // (A.shape, B.shape) of the last layer, as Python keeps it
  std::set<std::string> modules;
};

// Python's check_loaded_lora_compatibility_arrow: the sorted target module names and the rank all adapters share.
std::pair<std::vector<std::string>, int64_t> check_compatibility(const torch::nn::Module& model,
                                                                 const std::vector<std::string>& names) {
  std::optional<AdapterShape> reference;
  for (const std::string& name : names) {
    AdapterShape current;
    for_each_lora_A(model, name, [&](const detail::AdaptedLayer& layer, const LoraLayer& lora, const auto& record) {
      const auto [A, B] = lora.lora_weights(record);
      const std::size_t dot = layer.name.rfind('.');
      current.modules.insert(dot == std::string::npos ? layer.name : layer.name.substr(dot + 1));
      current.r = A.size(0);
      current.shapes = "(" + python_size(A.sizes()) + ", " + python_size(B.sizes()) + ")";
    });
    if (!reference) {
      reference = current;
      continue;
    }
    auto text = [](const std::optional<int64_t>& r) { return r ? std::to_string(*r) : std::string("None"); };
    if (current.r != reference->r) {
      throw ConfigError("[" + name + "] rank mismatch: " + text(current.r) + " != " + text(reference->r));
    }
    if (current.shapes != reference->shapes) {
      throw ConfigError("[" + name + "] shape mismatch: " + current.shapes + " != " + reference->shapes);
    }
    if (current.modules != reference->modules) {
      throw ConfigError("[" + name + "] target_modules mismatch:\n  this adapter -> " + python_list(current.modules) +
                        "\n  reference   -> " + python_list(reference->modules));
    }
  }
  if (!reference->r) {
    // Python fails here on int(None): no adapter is on a layer Arrow could route.
    throw ConfigError("Arrow routing found no Linear layer carrying the adapters " + python_list({names.begin(), names.end()}) + ".");
  }
  return {std::vector<std::string>(reference->modules.begin(), reference->modules.end()), *reference->r};
}

// Python's ensure_adapters_target_linear_layers_only (nn.Conv1d passes it, as in Python; the router then refuses it).
void ensure_linear_only(const torch::nn::Module& model, const std::vector<std::string>& names) {
  std::vector<std::string> offenders;
  for (const std::string& name : names) {
    for_each_lora_A(model, name, [&](const detail::AdaptedLayer& layer, const LoraLayer& lora, const auto&) {
      const LayerKind kind = lora.kind();
      if (kind == LayerKind::Linear || kind == LayerKind::LinearLike || kind == LayerKind::Conv1d) return;
      offenders.push_back("  - adapter '" + name + "' on module '" + layer.name + "' of type " +
                          detail::layer_kind_name(kind));
    });
  }
  if (offenders.empty()) return;
  std::string message =
      "LoRA adapters must only target Linear-like layers (nn.Linear, nn.Conv1d, HF Conv1D, or "
      "bitsandbytes.nn.Linear4bit). Found:";
  for (const std::string& line : offenders) message += "\n" + line;
  throw UnsupportedLayerError(message);
}

}  // namespace

void create_arrow_model(ModuleRef model_ref, const std::vector<std::string>& task_adapter_dirs,
                        const std::vector<std::string>& general_adapter_dirs, ArrowConfig arrow_config,
                        const LoadAdapterOptions& options) {
  torch::nn::Module& model = model_ref.get();
  if (task_adapter_dirs.empty()) {
    throw ConfigError("`task_specific_adapter_paths` should contain at least one adapter path");
  }
  detail::lora::check_arrow_config(arrow_config);
  // Python checks this after loading the task adapters; nothing is loaded yet here.
  if (arrow_config.use_gks() && general_adapter_dirs.empty()) {
    throw ConfigError("You should provide general LoRA paths if you want to use GenKnowSub.");
  }

  std::vector<std::string> loaded;  // undone if anything fails
  const std::vector<std::string> previously_active = active_adapters(model);
  std::map<std::string, bool> previously_trained;  // requires_grad of every parameter, as set_adapter changes it
  for (const auto& item : model.named_parameters()) previously_trained[item.key()] = item.value().requires_grad();
  auto load = [&](const std::string& dir, const std::string& name) {
    load_adapter(model, dir, name, options);
    loaded.push_back(name);
    const auto config = adapter_config(model, name);
    if (!config || config->peft_type() != "LORA") {
      throw ConfigError("Arrow combines LoRA adapters, but '" + dir + "' holds a " +
                        (config ? config->peft_type() : std::string("?")) + " adapter.");
    }
  };
  try {
    std::vector<std::string> task_names, gks_names;
    for (std::size_t i = 0; i < task_adapter_dirs.size(); ++i) {
      task_names.push_back("task_" + std::to_string(i));
      load(task_adapter_dirs[i], task_names.back());
    }
    if (arrow_config.use_gks()) {
      for (std::size_t i = 0; i < general_adapter_dirs.size(); ++i) {
        gks_names.push_back("gks_" + std::to_string(i));
        load(general_adapter_dirs[i], gks_names.back());
      }
    }
    arrow_config.task_adapter_names(task_names);
    arrow_config.gks_adapter_names(gks_names);

    std::vector<std::string> all = task_names;
    all.insert(all.end(), gks_names.begin(), gks_names.end());
    const auto [targets, r] = check_compatibility(model, all);
    ensure_linear_only(model, all);

    LoraConfig router;
    router.r(r).target_modules(targets).arrow_config(arrow_config);
    inject_adapter_in_model(router, model, detail::lora::kArrowRouterName);
    loaded.push_back(detail::lora::kArrowRouterName);
    set_adapter(model, detail::lora::kArrowRouterName);
  } catch (...) {
    // Loading activated each new adapter: the model's own ones first, so that deleting ours changes nothing else.
    if (!previously_active.empty()) set_adapter(model, previously_active);
    for (auto it = loaded.rbegin(); it != loaded.rend(); ++it) delete_adapter(model, *it);
    for (auto& item : model.named_parameters()) {
      const auto before = previously_trained.find(item.key());
      if (before != previously_trained.end() && item.value().requires_grad() != before->second) {
        item.value().set_requires_grad(before->second);
      }
    }
    throw;
  }
}

}  // namespace peft
