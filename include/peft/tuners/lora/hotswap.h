#pragma once

// Hot-swapping LoRA adapters in place (Python PEFT's utils/hotswap.py).

#include <cstdint>
#include <string>

#include <peft/config.h>
#include <peft/export.h>
#include <peft/module_ref.h>
#include <peft/state_dict.h>

namespace peft {

/// Pads every LoRA adapter to rank `target_rank` with zeros (outputs unchanged), so adapters of any rank up
/// to it can later be hot-swapped in without changing tensor shapes.
PEFT_API void prepare_for_hotswap(ModuleRef model, int64_t target_rank);
/// Replaces the weights (and scalings) of adapter `adapter_name` in place with those of another adapter of
/// compatible config, targeting the same or fewer layers (layers it does not cover are zeroed). The
/// directory holds adapter_config.json and adapter_model.safetensors.
PEFT_API void hotswap_adapter(ModuleRef model, const std::string& adapter_directory, const std::string& adapter_name);
/// Same from a state dict; `config` describes it (default: the config of the adapter being replaced).
PEFT_API void hotswap_adapter(ModuleRef model, const StateDict& state_dict, const std::string& adapter_name,
                              const PeftConfig* config = nullptr);

}  // namespace peft
