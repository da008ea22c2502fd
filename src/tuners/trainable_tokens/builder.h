#pragma once

#include <peft/tuners/trainable_tokens/config.h>

#include "core/method.h"

namespace peft::detail::trainable_tokens {

/// Builds TrainableTokens adapters for one injection, tying layers that share a targeted embedding's weight.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const TrainableTokensConfig& config);

}  // namespace peft::detail::trainable_tokens
