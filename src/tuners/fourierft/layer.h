#pragma once

#include <peft/tuners/fourierft/config.h>

#include "core/method.h"

namespace peft::detail::fourierft {

/// Builds FourierFT adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, FourierFTConfig& config);

}  // namespace peft::detail::fourierft
