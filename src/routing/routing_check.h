#pragma once

#include "core/layer_kinds.h"

namespace peft::detail {

/// Whether calls of LibTorch's forward for layers of this kind reach their adapters in this process: a call
/// made here binds like the program's own (through the dynamic linker's global search order), so a probe
/// layer whose forward is called tells. Checked once per kind.
bool routing_reaches(LayerKind kind);

/// Throws RoutingError, naming the fix, unless routing_reaches(kind).
void check_routing(LayerKind kind);

/// Whether layers of this exact module need routing (a LibTorch layer, or a subclass of one that is not a
/// peft:: drop-in layer); false for peft::Linear & co. and for peft::LinearLike layers.
bool needs_routing(const torch::nn::Module& module, LayerKind kind);

}  // namespace peft::detail
