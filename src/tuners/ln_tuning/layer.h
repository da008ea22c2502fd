#pragma once

#include <peft/tuners/ln_tuning/config.h>

#include "core/method.h"

namespace peft::detail::ln_tuning {

/// Builds LN tuning adapters (a trainable copy of each targeted layer) for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const LNTuningConfig& config);

}  // namespace peft::detail::ln_tuning
