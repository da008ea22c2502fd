#pragma once

#include <peft/tuners/osf/config.h>

#include "core/method.h"

namespace peft::detail::osf {

/// Builds OSF adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, OsfConfig& config);

}  // namespace peft::detail::osf
