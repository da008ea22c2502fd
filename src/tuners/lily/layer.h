#pragma once

#include <peft/tuners/lily/config.h>

#include "core/method.h"

namespace peft::detail::lily {

/// Builds Lily adapters for one injection: plan() groups the layers and creates the shared A and B modules.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, LilyConfig& config);

}  // namespace peft::detail::lily
