#pragma once

#include <peft/tuners/boft/config.h>

#include "core/method.h"

namespace peft::detail::boft {

/// Builds BOFT adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, BOFTConfig& config);

}  // namespace peft::detail::boft
