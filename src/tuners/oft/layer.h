#pragma once

#include <peft/tuners/oft/config.h>

#include "core/method.h"

namespace peft::detail::oft {

/// Builds OFT adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, OFTConfig& config);

}  // namespace peft::detail::oft
