#pragma once

// LoRA's initialisation methods (Python PEFT's LoraLayer.reset_lora_parameters and friends).

#include <optional>

#include <ATen/core/Tensor.h>

#include <peft/tuners/lora/config.h>

#include "core/layer_kinds.h"

namespace peft::detail::lora {

/// Names accepted in init_lora_weights, besides true/false.
bool is_supported_init(const std::string& method);
/// The iteration count of "pissa_niter_<n>" (Python's fast PiSSA), or nothing.
std::optional<int64_t> pissa_niter(const std::string& method);
/// Whether the init moves part of the base weight into the adapter (PiSSA, fast PiSSA, OLoRA).
bool rewrites_base_weight(const std::string& method);
/// init_lora_weights "mica" (any case): Minor Component Adaptation, lora_B frozen.
bool is_mica(const InitLoraWeights& init);

/// Initialises a new adapter's A and B (and B's bias) in place. For "pissa" and "olora", which move part
/// of the base weight into the adapter, returns the new base weight (as stored, same dtype).
std::optional<at::Tensor> initialise(const InitLoraWeights& init, const BaseLayer& base, int64_t r, double scaling,
                                     const at::Tensor& A, const at::Tensor& B, const at::Tensor& B_bias);

}  // namespace peft::detail::lora
