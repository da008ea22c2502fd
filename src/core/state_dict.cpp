// get_peft_model_state_dict / set_peft_model_state_dict with Python PEFT's checkpoint keys.
//
// Python PEFT wraps an adapted layer, so its base tensors are saved as `<layer>.base_layer.<name>`; here
// the layer keeps its names, and the two spellings are translated: both are accepted on load, Python's is
// written on save so files stay interchangeable. A tensor an adapter shares between its layers (VeRA's vera_A)
// is registered in each of them and has one checkpoint key, Python's model-level "base_model.vera_A".

#include <peft/state_dict.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

#include <peft/error.h>

#include "core/inject_internal.h"
#include "core/model_adapters.h"
#include "core/module_walk.h"
#include "core/tensor_slots.h"
#include "core/method.h"
#include "core/python_regex.h"
#include "tuners/modules_to_save/layer.h"

namespace peft {
namespace {

using detail::AdaptedLayer;
using detail::AdapterTensor;

const std::string kPeftPrefix = "base_model.model.";

std::string join(const std::string& module, const std::string& key) { return module.empty() ? key : module + "." + key; }


/// Where a checkpoint tensor goes.
struct Slot {
  torch::nn::Module* owner;
  std::string name;
  bool is_buffer;
  std::string model_key;        // the model's own key, for messages
  torch::nn::Module* layer;     // the layer whose device/dtype adopted tensors take
  bool adapter_tensor;          // counts for missing_keys
};

const at::Tensor& slot_tensor(const Slot& s) {
  const auto& map = s.is_buffer ? detail::buffers_of(*s.owner) : detail::parameters_of(*s.owner);
  return *map.find(s.name);
}

// The adapter's own tensors by checkpoint key, in module order. A tensor the adapter shares between its layers
// (Method::SharedContainer) is one key, "base_model.<container>", with a slot in every layer that holds it.
struct AdapterSlots {
  // A layer's own key; a shared tensor's model-level key; the model-level key of a shared container with
  // layer_keys, which only files hold (written by save_adapter, never expected on load).
  enum Kind { LAYER, SHARED, FILE_ONLY };
  std::vector<std::string> order;
  std::unordered_map<std::string, std::vector<Slot>> by_key;
  std::unordered_map<std::string, Kind> kind;

  void add(const std::string& key, Slot slot, Kind key_kind) {
    auto& slots = by_key[key];
    if (slots.empty()) {
      order.push_back(key);
      kind[key] = key_kind;
    }
    slots.push_back(std::move(slot));
  }
};

// The slots of the adapted layers, or (`copies`) those of the modules_to_save copies. Shared tensors the config
// does not save (VeRA without save_projection) are left out.
void add_adapter_slots(AdapterSlots& out, const std::vector<AdaptedLayer>& layers, const std::string& adapter,
                       const PeftConfig& config, bool copies) {
  // Layer keys of shared containers with layer_keys: each names the one tensor, so it goes to every slot of it.
  std::vector<std::pair<std::string, std::string>> layer_keys_of_shared;  // (layer key, model-level key)
  for (const AdaptedLayer& layer : layers) {
    if (detail::is_modules_to_save(*layer.adapters) != copies) continue;
    const detail::Method* method = copies ? nullptr : detail::find_method(layer.adapters->peft_type());
    const std::string checkpoint_module = layer.adapters->checkpoint_module(layer.name);
    for (const AdapterTensor& t : layer.adapters->adapter_tensors(*layer.module, adapter)) {
      Slot slot{t.owner, t.name, t.is_buffer, join(layer.name, t.model_key), layer.module, true};
      const auto* shared = method ? method->shared_container(t.key) : nullptr;
      if (!shared) {
        out.add(join(checkpoint_module, t.key), std::move(slot), AdapterSlots::LAYER);
      } else if (shared->saved(config)) {
        if (shared->layer_keys) {
          const std::string key = join(layer.name, t.key);
          out.add(key, slot, AdapterSlots::LAYER);
          layer_keys_of_shared.emplace_back(key, shared->checkpoint_key(layer.name));
        }
        const std::string model_key = shared->checkpoint_key(layer.name);
        slot.model_key = model_key;
        out.add(model_key, std::move(slot),
                shared->layer_keys ? AdapterSlots::FILE_ONLY : AdapterSlots::SHARED);
      }
    }
  }
  for (const auto& [key, model_level] : layer_keys_of_shared) out.by_key[key] = out.by_key[model_level];
}

// Base-model tensors by every name a checkpoint may use for them.
std::unordered_map<std::string, Slot> base_slots(const torch::nn::Module& model) {
  std::unordered_map<std::string, Slot> out;
  detail::walk_modules(model, [&](const std::string& name, const torch::nn::Module& m) {
    auto* module = const_cast<torch::nn::Module*>(&m);
    detail::AdapterLayer* adapters = detail::adapter_layer_of(m);
    const char* wrapper = !adapters ? nullptr : detail::is_modules_to_save(*adapters) ? "original_module" : "base_layer";
    auto add = [&](const std::string& key, bool buffer) {
      Slot slot{module, key, buffer, join(name, key), module, false};
      out.emplace(join(name, key), slot);
      if (wrapper) out.emplace(join(join(name, wrapper), key), slot);
    };
    for (const auto& p : detail::parameters_of(m)) {
      if (p.value().defined()) add(p.key(), false);
    }
    for (const auto& b : detail::buffers_of(m)) {
      if (b.value().defined()) add(b.key(), true);
    }
  });
  return out;
}

std::string shape_text(at::IntArrayRef sizes) {
  std::ostringstream os;
  os << "torch.Size([";
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  os << "])";
  return os.str();
}

// The model's own tensors (adapter containers left out), module by module, each module's parameters then its
// buffers: PyTorch's state_dict order. `python_names`: keyed as Python PEFT's model keys them, an adapted layer's
// tensors under its `base_layer.` (modules_to_save: `original_module.`) infix; otherwise the model's own names.
struct BaseTensor {
  std::string key;
  Slot slot;
};
std::vector<BaseTensor> model_tensors(const torch::nn::Module& root, const std::string& root_name, bool python_names) {
  std::vector<BaseTensor> out;
  std::unordered_map<const torch::nn::Module*, std::string> inner;  // a module's Python path, inside its wrapper
  detail::walk_modules(const_cast<torch::nn::Module&>(root), [&](const detail::ModuleVisit& v) {
    std::string path;
    if (!v.parent) {
      path = root_name;
    } else {
      const std::string last = v.name.substr(v.name.rfind('.') + 1);
      path = join(inner[v.parent], last);
    }
    detail::AdapterLayer* adapters = detail::adapter_layer_of(v.module);
    if (adapters && python_names) path = join(path, detail::is_modules_to_save(*adapters) ? "original_module" : "base_layer");
    inner[&v.module] = path;
    const std::string own = v.parent ? join(root_name, v.name) : root_name;
    auto add = [&](const std::string& key, bool buffer) {
      out.push_back({join(python_names ? path : own, key), Slot{&v.module, key, buffer, join(own, key), &v.module, false}});
    };
    for (const auto& p : detail::parameters_of(v.module)) {
      if (p.value().defined()) add(p.key(), false);
    }
    for (const auto& b : detail::buffers_of(v.module)) {
      if (b.value().defined()) add(b.key(), true);
    }
  });
  return out;
}

const torch::nn::Module* find_module(const torch::nn::Module& model, const std::string& name) {
  const torch::nn::Module* found = nullptr;
  detail::walk_modules(model, [&](const std::string& n, const torch::nn::Module& m) {
    if (!found && n == name) found = &m;
  });
  return found;
}

std::string python_str_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", '" : "'") + items[i] + "'";
  return out + "]";
}

// Python's get_peft_model_state_dict, "DEAL WITH EMBEDDINGS": decides save_embedding_layers as Python does
// (warnings included) and adds the embedding layers' base tensors to `out`.
void add_embedding_layers(const torch::nn::Module& model, const PeftConfig& config, const PeftStateDictOptions& options,
                          StateDict& out) {
  static const std::vector<std::string> kEmbeddingLayerNames{"embed_tokens", "lm_head"};  // EMBEDDING_LAYER_NAMES
  const TargetModules& targets = config.target_modules();
  bool embedding_is_targeted = false;
  if (targets.is_regex()) {
    // Every module whose name ends in an embedding name, matched against the pattern (re.fullmatch).
    const detail::PythonRegex pattern(targets.pattern(), detail::PythonRegex::Anchor::Full, "target_modules");
    detail::walk_modules(model, [&](const std::string& name, const torch::nn::Module&) {
      if (embedding_is_targeted) return;
      for (const std::string& e : kEmbeddingLayerNames) {
        const bool ends = name == e || (name.size() > e.size() && name.compare(name.size() - e.size() - 1, e.size() + 1, "." + e) == 0);
        if (ends && pattern.matches(name)) embedding_is_targeted = true;
      }
    });
  } else if (targets.is_names()) {
    // Python asks `k in config.target_modules`: the names as they are, no suffix matching.
    for (const std::string& e : kEmbeddingLayerNames) {
      if (std::find(targets.names().begin(), targets.names().end(), e) != targets.names().end()) embedding_is_targeted = true;
    }
  }
  const bool using_trainable_tokens = detail::require_method(config.peft_type()).uses_trainable_tokens(config);

  bool save = options.save_embedding_layers == SaveEmbeddingLayers::On;
  if (options.save_embedding_layers == SaveEmbeddingLayers::Auto && embedding_is_targeted && !using_trainable_tokens) {
    TORCH_WARN("Setting `save_embedding_layers` to `True` as embedding layers found in `target_modules`.");
    save = true;
  } else if (options.save_embedding_layers == SaveEmbeddingLayers::Auto) {
    const std::optional<std::string>& model_id = config.base_model_name_or_path();
    bool has_base_config = false;
    std::filesystem::path config_file;
    if (model_id) {
      config_file = std::filesystem::path(*model_id) / "config.json";
      has_base_config = std::filesystem::exists(config_file);
      if (!has_base_config) {
        // Python then asks the Hub; peft-cpp never does, so it answers as Python does offline (HF_HUB_OFFLINE).
        TORCH_WARN("Could not find a config file in ", *model_id, " - will assume that the vocabulary was not modified.");
      }
    }
    bool resized = false;
    if (options.vocab_size && *options.vocab_size != 0 && model_id && !model_id->empty() && has_base_config) {
      std::ifstream in(config_file);
      nlohmann::json base_config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (base_config.is_discarded() || !base_config.is_object()) {
        throw FileFormatError(config_file.string() + " is not a JSON object; save_embedding_layers \"auto\" reads the "
                              "base model's vocab_size from it (or pass save_embedding_layers On or Off)");
      }
      const auto it = base_config.find("vocab_size");
      if (it == base_config.end() || !it->is_number_integer()) {
        throw FileFormatError(config_file.string() + " has no integer vocab_size; save_embedding_layers \"auto\" "
                              "compares it with the model's (pass save_embedding_layers On or Off instead)");
      }
      resized = it->get<int64_t>() != *options.vocab_size;
    }
    if (resized) {
      TORCH_WARN("Setting `save_embedding_layers` to `True` as the embedding layer has been resized during finetuning.");
      save = true;
    } else {
      save = false;
    }
  }
  if (!save) return;
  if (!options.input_embeddings) {
    TORCH_WARN("Could not identify embedding layer(s) because the model is not a \xF0\x9F\xA4\x97 transformers model.");
    return;
  }
  for (const std::optional<std::string>& name : {options.input_embeddings, options.output_embeddings}) {
    if (!name) continue;  // get_output_embeddings() returned None
    const torch::nn::Module* layer = find_module(model, *name);
    if (!layer) {
      throw ConfigError("save_embedding_layers: the embedding layer '" + *name + "' (" +
                        (name == options.input_embeddings ? "input_embeddings" : "output_embeddings") +
                        ") names no module of the model");
    }
    // A targeted embedding is saved only when it is an adapted Linear or Embedding (Python's
    // has_valid_embedding_base_layer); an embedding that is not targeted is saved whole (it must have been resized).
    detail::AdapterLayer* adapters = detail::adapter_layer_of(*layer);
    bool valid_base_layer = false;
    if (adapters && !detail::is_modules_to_save(*adapters)) {
      const detail::LayerKind kind = adapters->base_layer().kind;
      valid_base_layer = kind == detail::LayerKind::Linear || kind == detail::LayerKind::Embedding;
    }
    if (embedding_is_targeted && !valid_base_layer) continue;
    for (const BaseTensor& t : model_tensors(*layer, *name, /*python_names=*/true)) {
      if (!out.contains(t.key)) out.insert(t.key, slot_tensor(t.slot));
    }
  }
}

}  // namespace

namespace detail {

StateDict adapter_state_dict(const torch::nn::Module& model, const std::string& adapter_name, bool for_file) {
  const std::shared_ptr<const PeftConfig> config = detail::require_adapter(model, adapter_name);
  const std::vector<AdaptedLayer> layers = detail::adapted_layers(model);
  AdapterSlots slots;
  add_adapter_slots(slots, layers, adapter_name, *config, /*copies=*/false);
  StateDict out;
  // The layers' tensors, then (as Python's tuners add them) the shared ones.
  for (AdapterSlots::Kind kind : {AdapterSlots::LAYER, AdapterSlots::SHARED, AdapterSlots::FILE_ONLY}) {
    if (kind == AdapterSlots::FILE_ONLY && !for_file) continue;
    for (const std::string& key : slots.order) {
      if (slots.kind[key] == kind) out.insert(key, slot_tensor(slots.by_key[key].front()));
    }
  }

  // Biases, per the config's `bias`, under Python's names.
  const std::string bias = config->bias_mode();
  if (bias != "none") {
    detail::walk_modules(model, [&](const std::string& name, const torch::nn::Module& m) {
      detail::AdapterLayer* adapters = detail::adapter_layer_of(m);
      if (adapters && detail::is_modules_to_save(*adapters)) return;  // saved through its copy
      const bool adapted_by_method = adapters && config->peft_type() == adapters->peft_type();
      if (bias != "all" && !adapted_by_method) return;
      const at::Tensor* b = detail::parameters_of(m).find("bias");
      if (!b || !b->defined()) return;
      const std::string key = join(adapters ? join(name, "base_layer") : name, "bias");
      if (!out.contains(key)) out.insert(key, *b);
    });
  }
  detail::require_method(config->peft_type()).adjust_checkpoint(*config, out);
  // Python adds the modules_to_save copies last, over any bias of the same name.
  AdapterSlots copies;
  add_adapter_slots(copies, layers, adapter_name, *config, /*copies=*/true);
  for (const std::string& key : copies.order) {
    const at::Tensor& tensor = slot_tensor(copies.by_key[key].front());
    if (out.contains(key)) {
      out[key] = tensor;
    } else {
      out.insert(key, tensor);
    }
  }
  return out;
}

}  // namespace detail

namespace detail {

void add_embedding_layers(const torch::nn::Module& model, const std::string& adapter_name,
                          const PeftStateDictOptions& options, StateDict& out) {
  if (options.save_embedding_layers == SaveEmbeddingLayers::Off) return;  // nothing to decide, nothing to warn
  const std::shared_ptr<const PeftConfig> config = detail::require_adapter(model, adapter_name);
  peft::add_embedding_layers(model, *config, options, out);
}

}  // namespace detail

StateDict get_peft_model_state_dict(ConstModuleRef model_ref, const std::string& adapter_name,
                                    const PeftStateDictOptions& options) {
  StateDict out = detail::adapter_state_dict(model_ref.get(), adapter_name, /*for_file=*/false);
  detail::add_embedding_layers(model_ref.get(), adapter_name, options, out);
  return out;
}

StateDict get_base_model_state_dict(ConstModuleRef model_ref) {
  StateDict out;
  for (const BaseTensor& t : model_tensors(model_ref.get(), "", /*python_names=*/false)) {
    if (out.contains(t.key)) continue;
    const detail::AdapterLayer* adapters = t.slot.is_buffer ? nullptr : detail::adapter_layer_of(*t.slot.owner);
    out.insert(t.key, adapters ? adapters->base_value(t.slot.name, slot_tensor(t.slot)) : slot_tensor(t.slot));
  }
  return out;
}

LoadResult set_base_model_state_dict(ModuleRef model_ref, const StateDict& state_dict, bool strict) {
  torch::nn::Module& model = model_ref.get();
  std::vector<BaseTensor> tensors = model_tensors(model, "", /*python_names=*/false);
  std::unordered_map<std::string, const Slot*> by_key;
  for (const BaseTensor& t : tensors) by_key.emplace(t.key, &t.slot);
  LoadResult result;
  std::vector<std::pair<const Slot*, const at::Tensor*>> plan;
  std::vector<std::string> problems;
  for (const auto& item : state_dict) {
    auto it = by_key.find(item.key());
    if (it == by_key.end()) {
      result.unexpected_keys.push_back(item.key());
      continue;
    }
    const Slot& slot = *it->second;
    const at::Tensor& value = item.value();
    const at::Tensor& target = slot_tensor(slot);
    if (!value.defined() || value.device().is_meta()) {
      problems.push_back("tensor for " + item.key() + (value.defined() ? " is on the meta device and holds no values" : " is undefined"));
    } else if (value.sizes() != target.sizes()) {
      problems.push_back("size mismatch for " + item.key() + ": copying a param with shape " + shape_text(value.sizes()) +
                         " from checkpoint, the shape in current model is " + shape_text(target.sizes()) + ".");
    } else if (!(value.scalar_type() == target.scalar_type() || (value.is_floating_point() && target.is_floating_point()))) {
      problems.push_back("dtype mismatch for " + item.key() + ": the checkpoint holds " +
                         std::string(c10::toString(value.scalar_type())) + ", the model " +
                         std::string(c10::toString(target.scalar_type())) + ".");
    } else if (target.device().is_meta()) {
      problems.push_back(item.key() + " is on the meta device in the model; give it real storage first "
                         "(peft::assign_tensors adopts tensors into meta-device parameters).");
    } else {
      plan.emplace_back(&slot, &value);
    }
  }
  std::unordered_map<std::string, bool> given;
  for (const auto& item : state_dict) given[item.key()] = true;
  std::unordered_map<std::string, bool> listed;
  for (const BaseTensor& t : tensors) {
    if (!given.count(t.key) && listed.emplace(t.key, true).second) result.missing_keys.push_back(t.key);
  }
  if (strict && (!result.missing_keys.empty() || !result.unexpected_keys.empty())) {
    std::string message = "Error(s) in loading state_dict:";
    if (!result.missing_keys.empty()) message += "\n\tMissing key(s) in state_dict: " + python_str_list(result.missing_keys);
    if (!result.unexpected_keys.empty()) message += "\n\tUnexpected key(s) in state_dict: " + python_str_list(result.unexpected_keys);
    throw StateDictError(message);
  }
  if (!problems.empty()) {
    std::string message = "Error(s) in loading state_dict for " + model.name() + ":";
    for (const auto& p : problems) message += "\n\t" + p;
    throw StateDictError(message);
  }
  at::NoGradGuard no_grad;
  for (const auto& [slot, value] : plan) {
    slot_tensor(*slot).copy_(*value);
    if (detail::AdapterLayer* adapters = slot->is_buffer ? nullptr : detail::adapter_layer_of(*slot->owner)) {
      adapters->base_tensor_written(slot->name);
    }
  }
  return result;
}

LoadResult set_peft_model_state_dict(ModuleRef model_ref, const StateDict& given, const std::string& adapter_name,
                                     bool low_cpu_mem_usage) {
  SetStateDictOptions options;
  options.low_cpu_mem_usage = low_cpu_mem_usage;
  return set_peft_model_state_dict(model_ref, given, adapter_name, options);
}

LoadResult set_peft_model_state_dict(ModuleRef model_ref, const StateDict& given, const std::string& adapter_name,
                                     const SetStateDictOptions& options) {
  const bool low_cpu_mem_usage = options.low_cpu_mem_usage;
  torch::nn::Module& model = model_ref.get();
  const std::shared_ptr<const PeftConfig> config = detail::require_adapter(model, adapter_name);
  // The method's view of its own checkpoint format (VB-LoRA's top-k files become logits).
  const std::optional<StateDict> converted =
      detail::require_method(config->peft_type()).checkpoint_for_load(*config, given);
  const StateDict& state_dict = converted ? *converted : given;
  const std::vector<AdaptedLayer> layers = detail::adapted_layers(model);
  AdapterSlots adapter;
  for (bool copies : {false, true}) add_adapter_slots(adapter, layers, adapter_name, *config, copies);
  const std::unordered_map<std::string, Slot> base = base_slots(model);

  // Plan and check everything before writing anything.
  struct Planned {
    const Slot* slots;  // every slot the tensor goes to (several for a shared tensor)
    size_t count;
    const at::Tensor* value;
  };
  std::vector<Planned> plan;
  LoadResult result;
  std::unordered_map<std::string, bool> provided;
  std::vector<std::string> problems;
  for (const auto& item : state_dict) {
    const std::string& original = item.key();
    const std::string key = original.compare(0, kPeftPrefix.size(), kPeftPrefix) == 0 ? original.substr(kPeftPrefix.size()) : original;
    const Slot* slots = nullptr;
    size_t count = 1;
    bool adapter_key = false;
    if (auto it = adapter.by_key.find(key); it != adapter.by_key.end()) {
      slots = it->second.data();
      count = it->second.size();
      adapter_key = true;
    } else if (auto b = base.find(key); b != base.end()) {
      slots = &b->second;
    }
    if (!slots) {
      result.unexpected_keys.push_back(original);
      continue;
    }
    const Slot& slot = slots[0];
    const at::Tensor& value = item.value();
    const at::Tensor& target = slot_tensor(slot);
    if (!value.defined()) {
      problems.push_back("tensor for " + original + " is undefined");
      continue;
    }
    if (value.device().is_meta()) {
      problems.push_back("tensor for " + original + " is on the meta device and holds no values");
      continue;
    }
    if (value.sizes() != target.sizes()) {
      // Python's _find_mismatched_keys: with ignore_mismatched_sizes the key is left out, unless the model's tensor
      // could be a packed 4-bit weight (last dimension 1, half the checkpoint's elements), which Python keeps, so
      // that its load_state_dict refuses it.
      const bool packed_4bit = target.dim() > 0 && target.size(-1) == 1 && target.numel() * 2 == value.numel();
      // Python names the model's key: the adapter's own (adapter name inserted) or the base tensor's as given.
      const std::string& model_key = adapter_key ? slot.model_key : key;
      if (options.ignore_mismatched_sizes && !packed_4bit) {
        result.mismatched_keys.push_back({model_key, value.sizes().vec(), target.sizes().vec()});
        continue;
      }
      problems.push_back("size mismatch for " + model_key + ": copying a param with shape " +
                         shape_text(value.sizes()) + " from checkpoint, the shape in current model is " +
                         shape_text(target.sizes()) + ".");
      continue;
    }
    const bool convertible = value.scalar_type() == target.scalar_type() ||
                             (value.is_floating_point() && target.is_floating_point());
    if (!convertible) {
      problems.push_back("dtype mismatch for " + slot.model_key + ": the checkpoint holds " +
                         std::string(c10::toString(value.scalar_type())) + ", the model " +
                         std::string(c10::toString(target.scalar_type())) + ".");
      continue;
    }
    if (target.device().is_meta() && !low_cpu_mem_usage) {
      problems.push_back(slot.model_key + " is on the meta device (the adapter was injected with low_cpu_mem_usage); "
                         "load it with low_cpu_mem_usage = true.");
      continue;
    }
    plan.push_back({slots, count, &value});
    if (adapter_key) provided[key] = true;
  }
  if (!problems.empty()) {
    std::string message = "Error(s) in loading state_dict for " + model.name() + ":";
    for (const auto& p : problems) message += "\n\t" + p;
    throw StateDictError(message);
  }
  for (const std::string& key : adapter.order) {
    if (!provided.count(key) && adapter.kind[key] != AdapterSlots::FILE_ONLY) result.missing_keys.push_back(key);
  }

  at::NoGradGuard no_grad;
  for (const Planned& p : plan) {
    // A tensor in several slots (shared) is written once, and an adopted one is the same tensor in every slot.
    detail::SharedReplacements replacements;
    for (size_t i = 0; i < p.count; ++i) {
      const Slot& slot = p.slots[i];
      replacements.replace(*slot.owner, slot.name, slot.is_buffer, [&](const at::Tensor& target) {
        if (!low_cpu_mem_usage) {
          target.copy_(*p.value);
          return target;
        }
        // Adopt the tensor: on the layer's device and in its float dtype, without a copy when it already fits.
        at::TensorOptions to = target.options();
        if (target.device().is_meta()) {
          const std::optional<detail::BaseLayer> layer = detail::describe_layer(*slot.layer);
          const at::Tensor weight = layer ? layer->weight() : at::Tensor();
          const bool real_layer = weight.defined() && !weight.device().is_meta();
          to = to.device(real_layer ? weight.device() : p.value->device());
        }
        return p.value->detach().to(to.device(), to.dtype().toScalarType());
      });
    }
  }
  // Adapters whose deltas live in base tensors (LoRA's target_parameters) follow their new values.
  for (const AdaptedLayer& layer : layers) layer.adapters->tensors_written(*layer.module);
  if (!result.mismatched_keys.empty()) {
    std::string lines;
    for (const MismatchedKey& m : result.mismatched_keys) {
      lines += (lines.empty() ? "" : "\n") + std::string("- ") + m.key + ": found shape " + shape_text(m.checkpoint_shape) +
               " in the checkpoint and " + shape_text(m.model_shape) + " in the model instantiated";
    }
    TORCH_WARN("Some weights of ", model.name(), " were not initialized from the model checkpoint and are being ignored "
               "because you passed `ignore_mismatched_sizes=True`: ", lines, ".");
  }
  return result;
}

}  // namespace peft
