#pragma once

#include <peft/tuners/psoft/config.h>

#include "core/method.h"

namespace peft::detail::psoft {

/// Builds PSOFT adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, PsoftConfig& config);

}  // namespace peft::detail::psoft
