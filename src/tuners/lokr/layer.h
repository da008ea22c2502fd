#pragma once

#include <peft/tuners/lokr/config.h>

#include "core/method.h"

namespace peft::detail::lokr {

/// Builds LoKr adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const LoKrConfig& config);

}  // namespace peft::detail::lokr
