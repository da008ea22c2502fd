#pragma once

#include <peft/tuners/hira/config.h>

#include "core/method.h"

namespace peft::detail::hira {

/// Builds HiRA adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, HiraConfig& config);

}  // namespace peft::detail::hira
