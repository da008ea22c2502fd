#pragma once

#include <peft/tuners/supertuning/config.h>

#include "core/method.h"

namespace peft::detail::supertuning {

/// Builds Super-Tuning adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, SupertuningConfig& config);

}  // namespace peft::detail::supertuning
