#pragma once

#include <peft/tuners/beft/config.h>

#include "core/method.h"

namespace peft::detail::beft {

/// Builds BEFT adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, BeftConfig& config);

}  // namespace peft::detail::beft
