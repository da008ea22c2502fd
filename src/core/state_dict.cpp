// get_peft_model_state_dict / set_peft_model_state_dict with Python PEFT's checkpoint keys.
//
// Python PEFT wraps an adapted layer, so its base tensors are saved as `<layer>.base_layer.<name>`; here
// the layer keeps its names, and the two spellings are translated: both are accepted on load, Python's is
// written on save so files stay interchangeable. A tensor an adapter shares between its layers (VeRA's vera_A)
// is registered in each of them and has one checkpoint key, Python's model-level "base_model.vera_A".

#include <peft/state_dict.h>

#include <optional>
#include <sstream>
#include <unordered_map>

#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

#include <peft/error.h>

#include "core/inject_internal.h"
#include "core/model_adapters.h"
#include "core/module_walk.h"
#include "core/tensor_slots.h"
#include "core/method.h"
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

StateDict get_peft_model_state_dict(ConstModuleRef model_ref, const std::string& adapter_name) {
  return detail::adapter_state_dict(model_ref.get(), adapter_name, /*for_file=*/false);
}

LoadResult set_peft_model_state_dict(ModuleRef model_ref, const StateDict& given, const std::string& adapter_name,
                                     bool low_cpu_mem_usage) {
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
    if (auto it = adapter.by_key.find(key); it != adapter.by_key.end()) {
      slots = it->second.data();
      count = it->second.size();
      provided[key] = true;
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
      problems.push_back("size mismatch for " + slot.model_key + ": copying a param with shape " +
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
        at::TensorOptions options = target.options();
        if (target.device().is_meta()) {
          const std::optional<detail::BaseLayer> layer = detail::describe_layer(*slot.layer);
          const at::Tensor weight = layer ? layer->weight() : at::Tensor();
          const bool real_layer = weight.defined() && !weight.device().is_meta();
          options = options.device(real_layer ? weight.device() : p.value->device());
        }
        return p.value->detach().to(options.device(), options.dtype().toScalarType());
      });
    }
  }
  return result;
}

}  // namespace peft
