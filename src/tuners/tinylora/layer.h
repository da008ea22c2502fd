#pragma once

#include <peft/tuners/tinylora/config.h>

#include "core/method.h"

namespace peft::detail::tinylora {

/// Builds TinyLoRA adapters for one injection: the adapter's trained vectors, one row per group of layers, once
/// (plan), then each layer's SVD factors and projection tensor.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, TinyLoraConfig& config);

/// The checkpoint key of group `group`'s vector: "base_model.tinylora_v.<group>" (Python's model-level keys).
std::string vector_key(int64_t group);

}  // namespace peft::detail::tinylora
