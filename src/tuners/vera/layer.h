#pragma once

#include <peft/tuners/vera/config.h>

#include "core/method.h"

namespace peft::detail::vera {

/// Builds VeRA adapters for one injection: the shared projections once (plan), then each layer's vectors.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, VeraConfig& config);

}  // namespace peft::detail::vera
