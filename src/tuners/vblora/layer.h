#pragma once

#include <peft/tuners/vblora/config.h>

#include "core/method.h"

namespace peft::detail::vblora {

/// Builds VB-LoRA adapters for one injection: the shared vector bank once (plan), then each layer's logits.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, VBLoRAConfig& config);

}  // namespace peft::detail::vblora
