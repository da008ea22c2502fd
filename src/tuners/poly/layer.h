#pragma once

#include <peft/tuners/poly/config.h>

#include "core/method.h"

namespace peft::detail::poly {

/// Builds Poly adapters for one injection, layer by layer.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, PolyConfig& config);

}  // namespace peft::detail::poly
