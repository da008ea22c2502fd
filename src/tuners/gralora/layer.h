#pragma once

#include <peft/tuners/gralora/config.h>

#include "core/method.h"

namespace peft::detail::gralora {

/// Builds GraLoRA adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, GraloraConfig& config);

}  // namespace peft::detail::gralora
