#pragma once

#include <peft/tuners/c3a/config.h>

#include "core/method.h"

namespace peft::detail::c3a {

/// Builds C3A adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const C3AConfig& config);

}  // namespace peft::detail::c3a
