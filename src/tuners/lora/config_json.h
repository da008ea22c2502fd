#pragma once

// The LoraConfig fields of Python PEFT that configure features peft-cpp does not have (Megatron, aLoRA,
// LoftQ, ...): shared by LoRA and AdaLoRA, whose Python config derives from LoraConfig.

#include <nlohmann/json.hpp>

#include "core/json_config.h"

namespace peft::detail::lora {

/// Accepts them when neutral (off / null / default) and rejects a value that would change the computation.
void read_unused_lora_fields(JsonConfigReader& in);
/// Writes them with Python's defaults.
void write_unused_lora_fields(nlohmann::json& out);

}  // namespace peft::detail::lora
