#pragma once

#include <peft/tuners/unilora/config.h>

#include "core/method.h"

namespace peft::detail::unilora {

/// Builds UniLoRA adapters for one injection: theta_d and the index assignment of all layers once (plan), then
/// each layer's index and scale buffers.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, UniLoraConfig& config);

}  // namespace peft::detail::unilora
