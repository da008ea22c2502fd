#pragma once

#include <peft/tuners/glora/config.h>

#include "core/method.h"

namespace peft::detail::glora {

/// Builds GLoRA adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, GloraConfig& config);

}  // namespace peft::detail::glora
