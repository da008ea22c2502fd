#pragma once

// Which Lily layers share their A and B: Python PEFT's LilyModel._post_injection_hook, decided before
// anything is created.

#include <cstddef>
#include <vector>

#include <peft/target_modules.h>

#include "core/method.h"

namespace peft::detail::lily {

/// For one layer of the injection: the indices (into the injection's layers) of the layers whose A and
/// whose B it uses; its own index where it has its own.
struct SharedWith {
  size_t a_owner;
  size_t b_owner;
};

/// Layers are grouped by (the entry of `targets` their name ends with, their weight shape), in model order.
/// In a group, every block of `stride_A` consecutive layers uses the block's first A, and all use the group's
/// first B. A regex `targets` is one entry for every layer. A layer whose name ends with no entry (injected
/// from a state dict's keys) shares nothing, as in Python.
std::vector<SharedWith> plan_sharing(const std::vector<LayerRequest>& layers, const TargetModules& targets,
                                     int64_t stride_A);

}  // namespace peft::detail::lily
