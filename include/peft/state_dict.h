#pragma once

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/ordered_dict.h>

#include <peft/export.h>
#include <peft/module_ref.h>

namespace peft {

/// Tensors by name, in insertion order (what LibTorch's Module::named_parameters returns).
using StateDict = torch::OrderedDict<std::string, torch::Tensor>;

/// What set_peft_model_state_dict did not find.
struct LoadResult {
  /// Tensors of the adapter that the state dict did not provide (base-model tensors are never listed).
  std::vector<std::string> missing_keys;
  /// Keys that name nothing in the model.
  std::vector<std::string> unexpected_keys;
};

/// The tensors of one adapter, keyed as Python PEFT's get_peft_model_state_dict keys them: the adapter
/// name removed (`linear.lora_A.weight`, `emb.lora_embedding_A`, DoRA's `lin.lora_magnitude_vector`),
/// biases per the config's `bias` (`lin.base_layer.bias` for adapted layers), and `modules_to_save`
/// copies under their layer's name (`lm_head.weight`). The tensors are the model's own (no copy).
PEFT_API StateDict get_peft_model_state_dict(ConstModuleRef model, const std::string& adapter_name = "default");

/// Loads an adapter's tensors into an injected model. Keys may carry Python's `base_model.model.` prefix.
/// Everything is checked before anything is written: a shape mismatch or an incompatible dtype throws
/// peft::StateDictError naming every offending key with both shapes, and the model is left untouched.
/// With `low_cpu_mem_usage`, the given tensors are adopted (no copy when device and dtype already fit),
/// replacing meta-device placeholders; otherwise they are copied into the existing parameters.
PEFT_API LoadResult set_peft_model_state_dict(ModuleRef model, const StateDict& state_dict,
                                              const std::string& adapter_name = "default", bool low_cpu_mem_usage = false);

}  // namespace peft
