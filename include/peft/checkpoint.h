#pragma once

// Adapter directories as Python PEFT's save_pretrained writes them and from_pretrained / load_adapter read
// them: adapter_config.json + adapter_model.safetensors.

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <peft/export.h>
#include <peft/module_ref.h>
#include <peft/state_dict.h>

namespace peft {

/// Writes `directory/adapter_config.json` (Python's layout: sorted keys, 2-space indent, inference_mode
/// true, peft_version naming this library) and `directory/adapter_model.safetensors` (keys prefixed
/// `base_model.model.`, metadata {"format": "pt"}, the adapter's own dtype). An adapter other than "default"
/// goes to `directory/<adapter_name>/`, as save_pretrained does. Each file is written atomically.
/// `options`: Python's save_embedding_layers (default "auto"; see PeftStateDictOptions).
PEFT_API void save_adapter(ConstModuleRef model, const std::string& directory,
                  const std::string& adapter_name = "default", const PeftStateDictOptions& options = {});

struct LoadAdapterOptions {
  /// Create the adapter on the meta device and adopt the file's tensors (memory-mapped) instead of copying.
  bool low_cpu_mem_usage = false;
  /// Load for training (Python's is_trainable); otherwise the adapter is frozen (inference_mode).
  bool is_trainable = false;
  /// Keep float16/bfloat16 adapter weights in float32, as Python PEFT does by default.
  bool autocast_adapter_dtype = true;
  /// Put the adapter's tensors on this device / in this dtype (default: the adapted layer's device and dtype).
  std::optional<c10::Device> device;
  std::optional<c10::ScalarType> dtype;
  /// Python's ignore_mismatched_sizes: the file's tensors whose shapes do not fit the adapter the config describes
  /// (or the base model) are left out, with Python's warning, and listed in LoadResult::mismatched_keys; those
  /// adapter tensors keep their initial values.
  bool ignore_mismatched_sizes = false;
  /// Python's key_mapping: (pattern, replacement) pairs in order. Each key of the file loses its
  /// `base_model.model.` (or `base_model.`) prefix, the first pattern that re.subn replaces something with rewrites
  /// it (Python's `re` syntax and replacement templates: `\1`, `\g<name>`), and the prefix is put back. A key
  /// without either prefix is an error, as in Python. Two keys mapped to one: the later tensor wins.
  std::vector<std::pair<std::string, std::string>> key_mapping;
};

/// Reads an adapter directory (for an adapter other than "default", `directory/<adapter_name>/` when it
/// exists, which is where save_adapter and Python's save_pretrained put it), injects the
/// adapter under `adapter_name` and loads its weights. Everything that can fail (missing or malformed files,
/// config values peft-cpp cannot honour, shapes that do not fit) fails before the model is changed.
PEFT_API LoadResult load_adapter(ModuleRef model, const std::string& directory,
                                 const std::string& adapter_name = "default", const LoadAdapterOptions& options = {});

}  // namespace peft
