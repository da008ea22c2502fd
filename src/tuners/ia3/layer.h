#pragma once

#include <peft/tuners/ia3/config.h>

#include "core/method.h"

namespace peft::detail::ia3 {

/// Builds IA3 adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, IA3Config& config);

}  // namespace peft::detail::ia3
