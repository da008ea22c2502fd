#pragma once

#include <peft/tuners/randlora/config.h>

#include "core/method.h"

namespace peft::detail::randlora {

/// Builds RandLoRA adapters for one injection: the shared bases once (plan), then each layer's lambda / gamma.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, RandLoraConfig& config);

}  // namespace peft::detail::randlora
