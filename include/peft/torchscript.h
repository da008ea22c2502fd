#pragma once

// Adapters on TorchScript models: the model a C++ program loaded with torch::jit::load, exported from Python
// with torch.jit.trace or torch.jit.script, unchanged.
//
//   torch::jit::Module m = torch::jit::load("gpt2_small.pt");
//   peft::load_adapter(m, "my-lora");           // Python PEFT's adapter directory
//   auto y = m.forward({ids});                  // runs through the adapter
//   peft::set_adapter(m, "other");  peft::disable_adapters(m);  peft::merge_adapter(m);  peft::unmerge_adapter(m);
//   peft::save_adapter(m, "out-dir");           // same keys as for torch::nn models
//   peft::merge_and_unload(m);  m.save("merged.pt");   // a plain TorchScript file any LibTorch program loads
//
// How it works. The first of these calls gives the model a torch::nn view: one module per TorchScript submodule,
// with the same dotted names (TorchScript keeps the Python names, so a Python adapter's keys match as they are).
// Submodules whose forward is a Linear, an Embedding, a Conv1d/2d/3d or a transformers-style Conv1D (weight stored
// (in, out), y = x W + b), checked on their graphs, become layers of that kind sharing the submodule's own weight
// and bias tensors; the others are plain containers. Every peft-cpp method is then injected, loaded, switched,
// merged and saved on that view exactly as on a torch::nn model (merges change the TorchScript weights in place).
// A submodule that carries an adapter has its forward methods (forward, and the forward1, forward2, ... that
// tracing creates for a module called more than once) replaced by one that calls its layer in the view, which
// applies the active adapters; the original methods come back when no adapter remains (delete_adapter, unload,
// merge_and_unload). Scripted models share one class type between submodules of the same kind and shape: every
// instance of a replaced type calls its own layer in the view, and layers without adapters compute exactly what
// the original method computed (the same operator on the same tensors); calls that do not go through an adapted
// submodule's type are not touched at all.
//
// Limits, each refused loudly:
// - A TorchScript file cannot hold a peft-cpp adapter: Module::save (and Module::clone) of a model that carries
//   adapters (merged or not) throws, naming the submodule. Save the adapter with save_adapter, or merge_and_unload first.
// - torch::jit::freeze and torch::jit::optimize_for_inference keep an adapted submodule's call to its layer in the
//   view as it is: the frozen copy runs the adapters and shares them (and the base weights) with the model it was
//   frozen from; switching adapters on the model switches the copy too. Freeze after merge_and_unload to get a
//   model that no longer depends on peft-cpp. Do not Inline or freeze the model before the first peft-cpp call:
//   an inlined graph no longer calls its submodules, so their adapters could not be reached (the view sees no
//   such submodule or none of its calls: injection targets only submodules whose forward is still called as a
//   method, and a model without any is refused).
// - Other submodule kinds (LayerNorm, MultiheadAttention, user modules) are containers in the view: targeting one
//   is peft::UnsupportedLayerError naming it, and the model is left as it was.
// - torch::jit::Method handles taken before a peft-cpp call keep running the code they had: take them again.
// - Mutating functions must go through these overloads (they keep the TorchScript methods and the view in step);
//   adapter_view() is read-only for that reason.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/csrc/jit/api/module.h>

#include <peft/checkpoint.h>
#include <peft/config.h>
#include <peft/export.h>
#include <peft/state_dict.h>

namespace peft {

/// As for torch::nn models (<peft/inject.h>, <peft/checkpoint.h>, <peft/state_dict.h>, <peft/lifecycle.h>).
PEFT_API void inject_adapter_in_model(const PeftConfig& config, torch::jit::Module& model,
                                      const std::string& adapter_name = "default", bool low_cpu_mem_usage = false,
                                      const std::optional<StateDict>& state_dict = std::nullopt);
PEFT_API LoadResult load_adapter(torch::jit::Module& model, const std::string& directory,
                                 const std::string& adapter_name = "default", const LoadAdapterOptions& options = {});
PEFT_API LoadResult set_peft_model_state_dict(torch::jit::Module& model, const StateDict& state_dict,
                                              const std::string& adapter_name = "default", bool low_cpu_mem_usage = false);
PEFT_API void set_adapter(torch::jit::Module& model, const std::string& adapter_name, bool inference_mode = false);
PEFT_API void set_adapter(torch::jit::Module& model, const std::vector<std::string>& adapter_names,
                          bool inference_mode = false);
PEFT_API void disable_adapters(torch::jit::Module& model);
PEFT_API void enable_adapters(torch::jit::Module& model);
PEFT_API void delete_adapter(torch::jit::Module& model, const std::string& adapter_name);
PEFT_API void merge_adapter(torch::jit::Module& model, const std::vector<std::string>& adapter_names = {},
                            bool safe_merge = false);
PEFT_API void unmerge_adapter(torch::jit::Module& model);
/// Merges and removes every adapter: the model is then plain TorchScript again (Module::save writes a file any
/// LibTorch program loads), with the merged weights.
PEFT_API void merge_and_unload(torch::jit::Module& model, bool safe_merge = false,
                               const std::vector<std::string>& adapter_names = {});
PEFT_API void unload(torch::jit::Module& model);

PEFT_API std::vector<std::string> adapter_names(const torch::jit::Module& model);
PEFT_API std::vector<std::string> active_adapters(const torch::jit::Module& model);
PEFT_API std::vector<std::string> targeted_module_names(const torch::jit::Module& model);
PEFT_API StateDict get_peft_model_state_dict(const torch::jit::Module& model, const std::string& adapter_name = "default",
                                             const PeftStateDictOptions& options = {});
PEFT_API void save_adapter(const torch::jit::Module& model, const std::string& directory,
                           const std::string& adapter_name = "default", const PeftStateDictOptions& options = {});
/// The adapter tensors that train (hand them to a torch::optim optimizer); a TorchScript forward in training mode
/// runs the adapters' dropout as torch::nn models do.
PEFT_API std::vector<at::Tensor> trainable_tensors(const torch::jit::Module& model);

/// The model's torch::nn view (see above), for the read-only functions taking a ConstModuleRef
/// (print_trainable_parameters, adapter_config, named_trainable_tensors, ...); nullptr while the model
/// carries no adapter.
PEFT_API std::shared_ptr<const torch::nn::Module> adapter_view(const torch::jit::Module& model);

}  // namespace peft
