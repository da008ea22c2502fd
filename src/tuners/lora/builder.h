#pragma once

#include <peft/tuners/lora/config.h>

#include "core/method.h"

namespace peft::detail::lora {

/// Builds LoRA adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, LoraConfig& config);

}  // namespace peft::detail::lora
