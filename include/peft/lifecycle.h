#pragma once

// Working with the adapters of an injected model (Python PEFT's PeftModel / peft.functional operations),
// on any model that went through inject_adapter_in_model.
//
// Thread safety: forward calls may run on any number of threads while another thread calls set_adapter,
// disable_adapters / enable_adapters or set_requires_grad: every adapted layer reads its adapter set once
// per call, so a call sees the old or the new set, never a mix. A forward through several layers that
// overlaps a switch can see the old set in early layers and the new one in later layers; use
// AdapterNamesPerSample (per-thread) when a request must see one set throughout. Operations that change
// the model's structure or weights (inject, delete_adapter, merge/unmerge, unload, hotswap,
// cast_adapter_dtype, set_peft_model_state_dict) must not overlap forward calls.

#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <peft/config.h>
#include <peft/state_dict.h>

namespace peft {

/// Names of the adapters in the model, in the order they were added.
std::vector<std::string> adapter_names(const torch::nn::Module& model);
/// The adapters forward currently applies (several add up).
std::vector<std::string> active_adapters(const torch::nn::Module& model);
/// The config an adapter was injected with; throws AdapterNameError for an unknown name.
std::shared_ptr<const PeftConfig> adapter_config(const torch::nn::Module& model, const std::string& adapter_name);

/// Makes these adapters the active ones (unknown names: AdapterNameError listing the known ones). Their
/// tensors become trainable unless `inference_mode`; the others are frozen. Merged layers are unmerged
/// first, with a warning, as in Python PEFT.
void set_adapter(torch::nn::Module& model, const std::string& adapter_name, bool inference_mode = false);
void set_adapter(torch::nn::Module& model, std::initializer_list<std::string> adapter_names, bool inference_mode = false);
void set_adapter(torch::nn::Module& model, const std::vector<std::string>& adapter_names, bool inference_mode = false);

/// Forward runs without any adapter (merged adapters are unmerged first) / with the active ones again.
void disable_adapters(torch::nn::Module& model);
void enable_adapters(torch::nn::Module& model);
bool adapters_disabled(const torch::nn::Module& model);

/// Disables the adapters for its lifetime and restores the previous state, also when an exception unwinds.
class DisabledAdapters {
 public:
  explicit DisabledAdapters(torch::nn::Module& model);
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
void delete_adapter(torch::nn::Module& model, const std::string& adapter_name);

/// Adds the adapters' deltas to the base weights (default: the active adapters) so forward no longer runs
/// them separately. With `safe_merge`, all new weights are computed and checked for NaN/Inf before any is
/// written ("NaNs detected in the merged weights. The adapter ... seems to be broken"); either way nothing
/// changes when an adapter cannot be merged. float16/bfloat16 deltas are computed in float32 on the CPU.
void merge_adapter(torch::nn::Module& model, const std::vector<std::string>& adapter_names = {}, bool safe_merge = false);
void merge_adapter(torch::nn::Module& model, std::initializer_list<std::string> adapter_names, bool safe_merge = false);
/// Subtracts the merged deltas again, last merged first.
void unmerge_adapter(torch::nn::Module& model);

/// Merges (default: the active adapters) and removes every adapter: the model is a plain LibTorch model
/// again, with merged weights. modules_to_save layers keep the active adapter's trained copy.
void merge_and_unload(torch::nn::Module& model, bool safe_merge = false, const std::vector<std::string>& adapter_names = {});
/// Removes every adapter without merging (modules_to_save layers keep the active adapter's trained copy).
void unload(torch::nn::Module& model);

/// Per-sample adapters for the forwards of the current thread while alive: row i of each adapted layer's
/// input uses adapter_names[i] ("__base__" for none). Python PEFT's `adapter_names=` forward argument.
/// Refused in training mode or for unknown names (at construction), and, in the adapted layers, when the
/// batch size differs, adapters are merged, or an adapter uses DoRA.
class AdapterNamesPerSample {
 public:
  AdapterNamesPerSample(torch::nn::Module& model, std::vector<std::string> adapter_names);
  ~AdapterNamesPerSample();
  AdapterNamesPerSample(const AdapterNamesPerSample&) = delete;
  AdapterNamesPerSample& operator=(const AdapterNamesPerSample&) = delete;

  struct Routing;

 private:
  std::unique_ptr<Routing> routing_;
  const Routing* previous_;
};

/// Pads every LoRA adapter to rank `target_rank` with zeros (outputs unchanged), so adapters of any rank up
/// to it can later be hot-swapped in without changing tensor shapes.
void prepare_for_hotswap(torch::nn::Module& model, int64_t target_rank);
/// Replaces the weights (and scalings) of adapter `adapter_name` in place with those of another adapter of
/// compatible config, targeting the same or fewer layers (layers it does not cover are zeroed). The
/// directory holds adapter_config.json and adapter_model.safetensors.
void hotswap_adapter(torch::nn::Module& model, const std::string& adapter_directory, const std::string& adapter_name);
/// Same from a state dict; `config` describes it (default: the config of the adapter being replaced).
void hotswap_adapter(torch::nn::Module& model, const StateDict& state_dict, const std::string& adapter_name,
                     const PeftConfig* config = nullptr);

/// Sets requires_grad on every tensor of these adapters.
void set_requires_grad(torch::nn::Module& model, const std::vector<std::string>& adapter_names, bool requires_grad = true);
/// Converts every floating-point tensor of the adapter to `dtype` (forward casts between them as needed).
void cast_adapter_dtype(torch::nn::Module& model, const std::string& adapter_name, c10::ScalarType dtype);

struct ParameterCount {
  int64_t trainable = 0;
  int64_t total = 0;
};
ParameterCount trainable_parameters(const torch::nn::Module& model);
/// "trainable params: 1,024 || all params: 10,240 || trainable%: 10.0000", as Python PEFT prints it.
void print_trainable_parameters(const torch::nn::Module& model, std::ostream& out);
void print_trainable_parameters(const torch::nn::Module& model);

}  // namespace peft
