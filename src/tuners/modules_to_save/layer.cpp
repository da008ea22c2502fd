#include "tuners/modules_to_save/layer.h"

#include <atomic>

#include <ATen/ops/empty.h>

#include <peft/error.h>

#include "core/sample_routing.h"
#include "core/tensor_slots.h"
#include "tuners/common/layer_copy.h"

namespace peft::detail {
namespace {

class PendingCopy final : public PendingChange {
 public:
  BaseLayer base;
  ModulesToSaveLayer* existing = nullptr;
  std::string adapter;
  std::shared_ptr<torch::nn::Module> copy;
  std::shared_ptr<const PeftConfig> config;

  void commit() override {
    ModulesToSaveLayer* layer = existing;
    if (!layer) {
      std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> containers;
      auto created = ModulesToSaveLayer::create(base, containers);
      attach_containers(*base.module, containers);
      layer = created.get();
    }
    layer->add(adapter, copy, config);
  }
};

}  // namespace

std::shared_ptr<ModulesToSaveLayer> ModulesToSaveLayer::create(
    const BaseLayer& base, std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>& attachments) {
  auto dict = std::make_shared<AnchoredModuleDictImpl>();
  auto layer = std::make_shared<ModulesToSaveLayer>(base);
  layer->copies_ = dict.get();
  dict->tuner = layer;
  attachments = {{"modules_to_save", dict}};
  return layer;
}

void ModulesToSaveLayer::add(const std::string& adapter, std::shared_ptr<torch::nn::Module> copy,
                             std::shared_ptr<const PeftConfig> config) {
  copies_->update({{adapter, copy}});
  {
    std::lock_guard<std::mutex> lock(mutex_);
    by_name_[adapter] = std::move(copy);
  }
  add_adapter_record(adapter, std::move(config));
}

void ModulesToSaveLayer::publish() {
  std::shared_ptr<torch::nn::Module> active;
  if (!disabled_) {
    for (const std::string& name : active_) {
      auto it = by_name_.find(name);
      if (it != by_name_.end()) {
        active = it->second;
        break;
      }
    }
  }
  std::atomic_store(&active_copy_, std::move(active));
}

void ModulesToSaveLayer::set_active_adapters(torch::nn::Module& base, const std::vector<std::string>& names,
                                             bool inference_mode) {
  int with_copy = 0;
  for (const auto& name : names) with_copy += has_adapter(name) ? 1 : 0;
  if (with_copy > 1) {
    throw ConfigError("Only one adapter can be set at a time for modules_to_save, got " + std::to_string(with_copy) +
                      " adapters with a copy of the same layer");
  }
  TunerLayer::set_active_adapters(base, names, inference_mode);
}

std::string ModulesToSaveLayer::checkpoint_key(std::string key) const {
  // "modules_to_save.weight" -> "weight": the copy's tensors are saved under the layer's own names.
  static const std::string prefix = "modules_to_save.";
  return key.compare(0, prefix.size(), prefix) == 0 ? key.substr(prefix.size()) : key;
}

at::Tensor ModulesToSaveLayer::forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) {
  if (const SampleRouting* routing = sample_routing()) {
    if (!disabled()) return forward_per_sample(input, base_forward, *routing);
  }
  const std::shared_ptr<torch::nn::Module> copy = std::atomic_load(&active_copy_);
  if (!copy) return base_forward(input);
  return forward_layer_copy(kind(), *copy, input);
}

at::Tensor ModulesToSaveLayer::forward_per_sample(const at::Tensor& input, BaseForward base_forward,
                                                  const SampleRouting& routing) {
  // Python's AuxiliaryTrainingWrapper._mixed_batch_forward: each group through its copy (or the layer).
  if (kind() == LayerKind::LayerNorm) {
    throw ConfigError("Mixed batching is only supported for the following modules: Linear, Embedding, Conv1d, "
                      "Conv2d, Conv3d.");
  }
  if (input.dim() == 0 || input.size(0) != static_cast<int64_t>(routing.names.size())) {
    throw ConfigError("Length of `adapter_names` should be the same as the number of inputs, but got " +
                      std::to_string(routing.names.size()) + " and " + std::to_string(input.dim() ? input.size(0) : 0) +
                      " respectively.");
  }
  at::Tensor result;
  for (const auto& [name, rows] : routing.groups) {
    const at::Tensor index = rows.device() == input.device() ? rows : rows.to(input.device());
    const at::Tensor sub_batch = input.index_select(0, index);
    std::shared_ptr<torch::nn::Module> copy;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = by_name_.find(name);
      if (it != by_name_.end()) copy = it->second;
    }
    const at::Tensor out = copy ? forward_layer_copy(kind(), *copy, sub_batch) : base_forward(sub_batch);
    if (!result.defined()) {
      std::vector<int64_t> shape = out.sizes().vec();
      shape[0] = input.size(0);
      result = at::empty(shape, out.options());
    }
    result.index_copy_(0, index, out);
  }
  return result;
}

void ModulesToSaveLayer::remove_adapter(torch::nn::Module&, const std::string& name) {
  erase_from(*copies_, name);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    by_name_.erase(name);
  }
  remove_adapter_record(name);
}

void ModulesToSaveLayer::prepare_unload(torch::nn::Module& base) {
  const std::shared_ptr<torch::nn::Module> copy = std::atomic_load(&active_copy_);
  if (!copy) return;
  at::NoGradGuard no_grad;
  for (const auto& param : parameters_of(*copy)) {
    if (at::Tensor* slot = parameters_of(base).find(param.key())) slot->set_data(param.value());
  }
  for (const auto& buffer : buffers_of(*copy)) {
    if (at::Tensor* slot = buffers_of(base).find(buffer.key())) slot->set_data(buffer.value());
  }
}

std::unique_ptr<PendingChange> prepare_modules_to_save(const BaseLayer& base, const std::string& module_name,
                                                       const std::string& adapter, std::shared_ptr<const PeftConfig> config,
                                                       TunerLayer* existing) {
  auto pending = std::make_unique<PendingCopy>();
  pending->copy = copy_layer(base);
  if (!pending->copy) {
    throw UnsupportedLayerError("modules_to_save: '" + module_name +
                                "' is a custom layer; peft-cpp can keep trainable copies of torch::nn::Linear, "
                                "Embedding, Conv1d/2d/3d and LayerNorm layers only");
  }
  if (existing) {
    if (std::string(existing->peft_type()) != "MODULES_TO_SAVE") {
      throw ConfigError("modules_to_save: '" + module_name + "' already carries " + existing->peft_type() +
                        " adapters; a layer cannot be both adapted and saved whole");
    }
    pending->existing = static_cast<ModulesToSaveLayer*>(existing);
  } else {
    check_container_names_free(*base.module, module_name, {"modules_to_save"});
  }
  pending->base = base;
  pending->adapter = adapter;
  pending->config = std::move(config);
  return pending;
}

}  // namespace peft::detail
