#pragma once

// LoRA's layer_replication: Python PEFT's replicate_layers, made undoable for the injection.

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "core/method.h"

namespace peft::detail::lora {

/// Finds the model's layer list as Python does (children "model" repeatedly, then "bert"; then "layers",
/// "encoder"."layer" or "h": a torch::nn::ModuleList) and rebuilds it, in place, from the [start, end) ranges of
/// `layer_map`. Every copy is made before the list changes; ConfigError, changing nothing, where the list is not
/// found, an index is out of range, or a block cannot be copied. Destroying the result un-kept restores the list.
std::unique_ptr<ModelPreparation> replicate_layers(torch::nn::Module& model,
                                                   const std::vector<std::pair<int64_t, int64_t>>& layer_map);

}  // namespace peft::detail::lora
