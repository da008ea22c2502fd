#pragma once

#include <peft/detail/caller_probes.h>

#include "core/base_layer.h"

namespace peft::detail {

/// Throws RoutingError unless forward calls made by the code behind `probes` to layers of this
/// (LibTorch) type reach their adapters. Checked once per calling binary and layer type.
void check_routing(LayerKind kind, const CallerProbes& probes);

/// Whether layers of this exact module need routing (a LibTorch layer or a subclass of one that is not a
/// peft:: drop-in layer); false for peft::Linear & co. and for peft::LinearLike layers.
bool needs_routing(const torch::nn::Module& module, LayerKind kind);

}  // namespace peft::detail
