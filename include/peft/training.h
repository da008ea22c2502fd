#pragma once

// Training an injected adapter with any torch::optim optimizer.
//
//   peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"q_proj", "v_proj"}), model);
//   torch::optim::AdamW optimizer(peft::trainable_tensors(model), torch::optim::AdamWOptions(1e-3));
//   peft::CpuMemoryCache cache;  // <peft/cpu_memory_cache.h>: each step reuses the last one's freed memory
//   ... loss.backward(); optimizer.step(); optimizer.zero_grad();
//   peft::save_adapter(model, "out");   // Python PEFT's layout, atomic: safe to call every N steps
//
// Injection already leaves only the new adapter trainable (unless its config has inference_mode). Autograd
// never allocates a .grad for a tensor that does not require grad, so frozen base weights may live in
// read-only memory (a mmapped safetensors file) and cost no gradient memory.

#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include <peft/export.h>
#include <peft/module_ref.h>
#include <peft/state_dict.h>

namespace peft {

/// Python PEFT's _mark_only_adapters_as_trainable: every parameter of the base model stops requiring grad; the
/// tensors of the active adapters and their modules_to_save copies require grad (also when they were loaded
/// for inference); then the biases `bias` names train: "none", "all" (every parameter named "bias") or
/// "<method>_only" ("lora_only": the biases of the layers carrying LoRA adapters). Without `bias`, each active
/// adapter's config says (its `bias` field; "none" for methods without one).
PEFT_API void mark_only_adapters_as_trainable(ModuleRef model, const std::optional<std::string>& bias = std::nullopt);

/// The tensors an optimizer should update: every parameter of the model that requires grad, in
/// named_parameters() order, each once (a tensor several layers share, such as VB-LoRA's vector bank, is listed
/// once so that the optimizer steps it once). The tensors are the model's own: updating them trains the model.
PEFT_API std::vector<at::Tensor> trainable_tensors(ConstModuleRef model);
/// The same tensors under their named_parameters() names ("lin0.lora_A.default.weight").
PEFT_API StateDict named_trainable_tensors(ConstModuleRef model);

}  // namespace peft
