#pragma once

#include <peft/tuners/hra/config.h>

#include "core/method.h"

namespace peft::detail::hra {

/// Builds HRA adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const HRAConfig& config);

}  // namespace peft::detail::hra
