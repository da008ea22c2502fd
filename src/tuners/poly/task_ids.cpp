#include <peft/tuners/poly/task_ids.h>

#include <ATen/ops/_to_copy.h>

#include <peft/error.h>

#include "core/model_adapters.h"
#include "tuners/poly/task_routing.h"

namespace peft::detail::poly {
namespace {
thread_local const TaskIds::Routing* tls_task_ids = nullptr;
}  // namespace

const TaskIds::Routing* current_task_ids() { return tls_task_ids; }

}  // namespace peft::detail::poly

namespace peft {

TaskIds::TaskIds(ModuleRef model_ref, at::Tensor task_ids)
    : routing_(std::make_unique<Routing>()), previous_(detail::poly::tls_task_ids) {
  if (!task_ids.defined() || task_ids.dim() != 1 || task_ids.is_floating_point() || task_ids.is_complex() ||
      task_ids.scalar_type() == at::kBool) {
    throw ConfigError("task_ids must be a 1-D integer tensor with one task id per sample.");
  }
  routing_->task_ids = task_ids.to(at::kLong);
  for (const detail::AdaptedLayer& layer : detail::adapted_layers(model_ref.get())) {
    routing_->layers.insert(layer.adapters);
  }
  detail::poly::tls_task_ids = routing_.get();
}

TaskIds::~TaskIds() { detail::poly::tls_task_ids = previous_; }

}  // namespace peft
