#pragma once

#include <peft/tuners/pvera/config.h>

#include "core/method.h"

namespace peft::detail::pvera {

/// Builds PVeRA adapters for one injection: the shared projections once (plan), then each layer's vectors.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, PveraConfig& config);

}  // namespace peft::detail::pvera
