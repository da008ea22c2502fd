#pragma once

#include <peft/tuners/waveft/config.h>

#include "core/method.h"

namespace peft::detail::waveft {

/// Builds WaveFT adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, WaveFTConfig& config);

}  // namespace peft::detail::waveft
