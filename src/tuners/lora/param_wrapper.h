#pragma once

// LoRA on parameters (LoraConfig::target_parameters; Python PEFT's lora.ParamWrapper), e.g. the experts of a
// mixture-of-experts block stored as 3-D tensors.
//
// Python applies such an adapter by parametrizing the parameter during the wrapper's forward. A C++ module reads its
// parameter member directly and has no forward peft-cpp could wrap, so here the parameter itself holds W + delta
// while the adapter is active (and enabled, or merged): activating, disabling, merging, loading and deleting
// adapters add or remove exactly the deltas they added. The adapter's tensors therefore do not train in peft-cpp
// (they stay frozen, and injecting a trainable one says so); train in Python PEFT, or adapt a module with
// target_modules.
//
// Layout as Python's: the targeted parameters of one module are wrapped in matching order, the last outermost; its
// lora_A / lora_B are children of the module, the one before under "base_layer", and so on, so the adapter's tensor
// names and checkpoint keys are Python's ("experts.lora_A.weight", "experts.base_layer.lora_A.weight"); the base
// parameters keep their names. One AdapterLayer per module holds all of them.

#include <vector>

#include <peft/tuners/lora/config.h>

#include "core/method.h"

namespace peft::detail::lora {

/// The changes that adapt `config`'s target_parameters, after the module targets (`request.targets`). Checks Python's
/// rules (the parameters must be 2-D or 3-D, not on a layer that target_modules adapts, the same set for every
/// adapter; lora_dropout, fan_in_fan_out, lora_bias, DoRA and variants refused) and raises or warns as Python does
/// where nothing matched.
std::vector<AuxiliaryChange> prepare_parameter_targets(const AuxiliaryRequest& request, const LoraConfig& config);

}  // namespace peft::detail::lora
