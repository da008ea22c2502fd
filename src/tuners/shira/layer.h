#pragma once

#include <peft/tuners/shira/config.h>

#include "core/method.h"

namespace peft::detail::shira {

/// Builds SHiRA adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, ShiraConfig& config);

}  // namespace peft::detail::shira
