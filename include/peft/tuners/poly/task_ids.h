#pragma once

#include <memory>

#include <ATen/core/Tensor.h>

#include <peft/export.h>
#include <peft/module_ref.h>

namespace peft {

/// Per-sample task ids for the forwards of the current thread while alive: sample i of each input batch belongs to
/// task task_ids[i]. Python PEFT's PolyModel `forward(task_ids=...)`: the Poly layers of `model` mix their skills
/// with each sample's task's router weights, and refuse to run without a guard. `task_ids` is a 1-D integer tensor
/// with one entry per sample (checked against the batch, and against each adapter's n_tasks, when a layer runs).
/// Guards nest: the innermost one of the thread wins until it is destroyed.
class PEFT_API TaskIds {
 public:
  TaskIds(ModuleRef model, at::Tensor task_ids);
  ~TaskIds();
  TaskIds(const TaskIds&) = delete;
  TaskIds& operator=(const TaskIds&) = delete;

  struct Routing;

 private:
  std::unique_ptr<Routing> routing_;
  const Routing* previous_;
};

}  // namespace peft
