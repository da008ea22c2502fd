#pragma once

#include <peft/tuners/peanut/config.h>

#include "core/method.h"

namespace peft::detail::peanut {

/// Builds PEANuT adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, PeanutConfig& config);

}  // namespace peft::detail::peanut
