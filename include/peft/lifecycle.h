#pragma once

// Working with the adapters of an injected model (Python PEFT's PeftModel / peft.functional operations),
// on any model that went through inject_adapter_in_model. `model` is a holder, a shared_ptr or the module.
//
// Threads. Forward calls may run on any number of threads while another thread switches which adapters
// run, as long as the switch changes no tensor's requires_grad flag, which autograd reads without a lock:
// that is set_adapter(model, names, /*inference_mode=*/true), and disable_adapters / enable_adapters, on a
// model whose adapters are all frozen (loaded for inference, which load_adapter does by default, or frozen
// with set_requires_grad(model, names, false)). Every adapted layer reads its adapter set once per call,
// so a call sees the old or the new set, never a mix. A forward through several layers that overlaps a
// switch can see the old set in early layers and the new one in later layers; use AdapterNamesPerSample
// (per thread) when a request must see one set throughout. Anything else — making adapters trainable,
// set_requires_grad, and every operation that changes the model's structure or weights (inject,
// delete_adapter, merge/unmerge, unload, cast_adapter_dtype, loading) — must not overlap forward calls.
// tests/test_threads.cpp checks this under ThreadSanitizer in CI.

#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <peft/config.h>
#include <peft/export.h>
#include <peft/module_ref.h>
#include <peft/state_dict.h>

namespace peft {

/// Names of the adapters in the model, in the order they were added.
PEFT_API std::vector<std::string> adapter_names(ConstModuleRef model);
/// The adapters forward currently applies (several add up).
PEFT_API std::vector<std::string> active_adapters(ConstModuleRef model);
/// The names of the layers that carry adapters (Python PEFT's targeted_module_names), in module order.
PEFT_API std::vector<std::string> targeted_module_names(ConstModuleRef model);
/// The config an adapter was injected with; throws AdapterNameError for an unknown name.
PEFT_API std::shared_ptr<const PeftConfig> adapter_config(ConstModuleRef model, const std::string& adapter_name);

/// Makes these adapters the active ones (unknown names: AdapterNameError listing the known ones). Their
/// tensors become trainable unless `inference_mode`; the others are frozen. Merged layers are unmerged
/// first, with a warning, as in Python PEFT.
PEFT_API void set_adapter(ModuleRef model, const std::string& adapter_name, bool inference_mode = false);
PEFT_API void set_adapter(ModuleRef model, std::initializer_list<std::string> adapter_names, bool inference_mode = false);
PEFT_API void set_adapter(ModuleRef model, const std::vector<std::string>& adapter_names, bool inference_mode = false);

/// Forward runs without any adapter (merged adapters are unmerged first) / with the active ones again.
/// Disabling freezes the adapter tensors; enabling gives the active adapters back the trainability the
/// last set_adapter (or injection) gave them, so a scope of DisabledAdapters restores the state exactly.
/// (Python PEFT's enable_adapter_layers makes them trainable even when they were loaded for inference.)
PEFT_API void disable_adapters(ModuleRef model);
PEFT_API void enable_adapters(ModuleRef model);
PEFT_API bool adapters_disabled(ConstModuleRef model);

/// Disables the adapters for its lifetime and restores the previous state, also when an exception unwinds.
class PEFT_API DisabledAdapters {
 public:
  explicit DisabledAdapters(ModuleRef model);
  ~DisabledAdapters();
  DisabledAdapters(const DisabledAdapters&) = delete;
  DisabledAdapters& operator=(const DisabledAdapters&) = delete;

 private:
  torch::nn::Module& model_;
  bool was_disabled_;
};

/// Removes the adapter's modules and tensors from every layer (a layer left without adapters becomes a
/// plain layer again). If it was active, the remaining active ones stay; if none remain, the first
/// remaining adapter becomes active (with a warning), as in Python PEFT. Merged adapters must be unmerged first.
PEFT_API void delete_adapter(ModuleRef model, const std::string& adapter_name);

/// Adds the adapters' deltas to the base weights (default: the active adapters) so forward no longer runs
/// them separately. With `safe_merge`, all new weights are computed and checked for NaN/Inf before any is
/// written ("NaNs detected in the merged weights. The adapter ... seems to be broken"); either way nothing
/// changes when an adapter cannot be merged. float16/bfloat16 deltas are computed in float32 on the CPU.
PEFT_API void merge_adapter(ModuleRef model, const std::vector<std::string>& adapter_names = {}, bool safe_merge = false);
PEFT_API void merge_adapter(ModuleRef model, std::initializer_list<std::string> adapter_names, bool safe_merge = false);
/// Subtracts the merged deltas again, last merged first.
PEFT_API void unmerge_adapter(ModuleRef model);

/// Merges (default: the active adapters) and removes every adapter: the model is a plain LibTorch model
/// again, with merged weights. modules_to_save layers keep the active adapter's trained copy.
PEFT_API void merge_and_unload(ModuleRef model, bool safe_merge = false, const std::vector<std::string>& adapter_names = {});
/// Removes every adapter without merging (modules_to_save layers keep the active adapter's trained copy).
PEFT_API void unload(ModuleRef model);

/// Per-sample adapters for the forwards of the current thread while alive: row i of each adapted layer's
/// input uses adapter_names[i] ("__base__" for none). Python PEFT's `adapter_names=` forward argument, for the
/// methods whose Python layers take it (LoRA, RoAd); the layers of other methods refuse it when they run.
/// Refused in training mode or for unknown names (at construction), and, in the adapted layers, when the
/// batch size differs, adapters are merged, or an adapter uses DoRA.
class PEFT_API AdapterNamesPerSample {
 public:
  AdapterNamesPerSample(ModuleRef model, std::vector<std::string> adapter_names);
  ~AdapterNamesPerSample();
  AdapterNamesPerSample(const AdapterNamesPerSample&) = delete;
  AdapterNamesPerSample& operator=(const AdapterNamesPerSample&) = delete;

  struct Routing;

 private:
  std::unique_ptr<Routing> routing_;
  const Routing* previous_;
};

/// Sets requires_grad on every tensor of these adapters.
PEFT_API void set_requires_grad(ModuleRef model, const std::vector<std::string>& adapter_names, bool requires_grad = true);
/// Converts every floating-point tensor of the adapter to `dtype` (forward casts between them as needed).
PEFT_API void cast_adapter_dtype(ModuleRef model, const std::string& adapter_name, c10::ScalarType dtype);

struct ParameterCount {
  int64_t trainable = 0;
  int64_t total = 0;
};
PEFT_API ParameterCount trainable_parameters(ConstModuleRef model);
/// "trainable params: 1,024 || all params: 10,240 || trainable%: 10.0000", as Python PEFT prints it.
PEFT_API void print_trainable_parameters(ConstModuleRef model, std::ostream& out);
PEFT_API void print_trainable_parameters(ConstModuleRef model);

}  // namespace peft
