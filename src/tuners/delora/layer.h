#pragma once

#include <peft/tuners/delora/config.h>

#include "core/method.h"

namespace peft::detail::delora {

/// Builds DeLoRA adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, DeloraConfig& config);

}  // namespace peft::detail::delora
