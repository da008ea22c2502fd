#pragma once

#include <peft/tuners/loha/config.h>

#include "core/method.h"

namespace peft::detail::loha {

/// Builds LoHa adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const LoHaConfig& config);

}  // namespace peft::detail::loha
