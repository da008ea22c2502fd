#pragma once

#include <peft/tuners/deft/config.h>

#include "core/method.h"

namespace peft::detail::deft {

/// Builds DeFT adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, DeftConfig& config);

}  // namespace peft::detail::deft
