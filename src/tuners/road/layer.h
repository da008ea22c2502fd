#pragma once

#include <peft/tuners/road/config.h>

#include "core/method.h"

namespace peft::detail::road {

/// Builds RoAd adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, RoadConfig& config);

}  // namespace peft::detail::road
