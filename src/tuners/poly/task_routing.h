#pragma once

// The task ids of the calling thread's innermost peft::TaskIds guard, as the Poly layers read them.

#include <unordered_set>

#include <ATen/core/Tensor.h>

#include <peft/tuners/poly/task_ids.h>

namespace peft::detail {
class AdapterLayer;
}  // namespace peft::detail

namespace peft {

struct TaskIds::Routing {
  at::Tensor task_ids;                                     // int64, one per sample
  std::unordered_set<const detail::AdapterLayer*> layers;  // the layers of the guarded model
};

}  // namespace peft

namespace peft::detail::poly {

/// The calling thread's innermost TaskIds, or nullptr.
const TaskIds::Routing* current_task_ids();

}  // namespace peft::detail::poly
