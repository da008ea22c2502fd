#pragma once

#include <peft/tuners/miss/config.h>

#include "core/method.h"

namespace peft::detail::miss {

/// Builds Miss adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const MissConfig& config);

}  // namespace peft::detail::miss
