#include "tuners/modules_to_save/layer.h"

#include <ATen/ops/empty.h>

#include <peft/error.h>

#include "core/sample_routing.h"
#include "core/tensor_slots.h"
#include "tuners/common/layer_copy.h"

namespace peft::detail {
namespace {

struct CopyRecord : AdapterRecord {
  CopyRecord(std::string name, std::shared_ptr<torch::nn::Module> layer_copy)
      : AdapterRecord(std::move(name)), copy(std::move(layer_copy)) {}
  std::shared_ptr<torch::nn::Module> copy;
};

const CopyRecord& copy_record(const AdapterRecord& record) { return static_cast<const CopyRecord&>(record); }

class PendingCopy final : public PendingChange {
 public:
  BaseLayer base;
  std::string module_name;
  ModulesToSaveLayer* existing = nullptr;
  std::string adapter;
  std::shared_ptr<torch::nn::Module> copy;
  std::shared_ptr<const PeftConfig> config;

  void commit() override {
    ModulesToSaveLayer* layer = existing;
    if (!layer) {
      auto created = std::make_shared<ModulesToSaveLayer>(base, module_name);
      attach_containers(*base.module, {{"modules_to_save", created->make_anchor(created)}});
      layer = created.get();
    }
    layer->add(adapter, copy, config);
  }
};

}  // namespace

ModulesToSaveLayer::ModulesToSaveLayer(const BaseLayer& base, std::string module_name)
    : AdapterLayer(base, std::move(module_name)) {}

std::shared_ptr<torch::nn::Module> ModulesToSaveLayer::make_anchor(const std::shared_ptr<ModulesToSaveLayer>& self) {
  auto dict = std::make_shared<AnchoredModuleDictImpl>();
  dict->adapters = self;
  copies_ = dict.get();
  return dict;
}

void ModulesToSaveLayer::add(const std::string& adapter, std::shared_ptr<torch::nn::Module> copy,
                             std::shared_ptr<const PeftConfig> config) {
  copies_->update({{adapter, copy}});
  add_adapter(std::make_shared<CopyRecord>(adapter, std::move(copy)), std::move(config));
}

void ModulesToSaveLayer::set_active_adapters(torch::nn::Module& base, const std::vector<std::string>& names,
                                             bool inference_mode) {
  int with_copy = 0;
  for (const auto& name : names) with_copy += has_adapter(name) ? 1 : 0;
  if (with_copy > 1) {
    throw ConfigError("Only one adapter can be set at a time for modules_to_save, got " + std::to_string(with_copy) +
                      " adapters with a copy of the same layer");
  }
  AdapterLayer::set_active_adapters(base, names, inference_mode);
}

std::string ModulesToSaveLayer::checkpoint_key(std::string key) const {
  // "modules_to_save.weight" -> "weight": the copy's tensors are saved under the layer's own names.
  static const std::string prefix = "modules_to_save.";
  return key.compare(0, prefix.size(), prefix) == 0 ? key.substr(prefix.size()) : key;
}

at::Tensor ModulesToSaveLayer::forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) {
  const std::shared_ptr<const AdapterSnapshot> state = snapshot();
  if (state->disabled) return base_forward(input);
  if (const SampleRouting* routing = sample_routing()) return forward_per_sample(input, base_forward, *state, *routing);
  if (state->active.empty()) return base_forward(input);
  return forward_layer_copy(kind(), *copy_record(*state->active.front()).copy, input);
}

at::Tensor ModulesToSaveLayer::forward_per_sample(const at::Tensor& input, BaseForward base_forward,
                                                  const AdapterSnapshot& state, const SampleRouting& routing) {
  // Python's AuxiliaryTrainingWrapper._mixed_batch_forward: each group through its copy (or the layer).
  if (kind() == LayerKind::LayerNorm) {
    throw ConfigError("Mixed batching is only supported for the following modules: Linear, Embedding, Conv1d, "
                      "Conv2d, Conv3d.");
  }
  check_sample_routing(input, routing, /*merged=*/false);  // a saved copy is never merged
  at::Tensor result;
  for (const auto& [name, rows] : routing.groups) {
    const at::Tensor index = rows.device() == input.device() ? rows : rows.to(input.device());
    const at::Tensor sub_batch = input.index_select(0, index);
    const AdapterRecord* record = state.find(name);
    const at::Tensor out = record ? forward_layer_copy(kind(), *copy_record(*record).copy, sub_batch) : base_forward(sub_batch);
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
  remove_adapter_record(name);
}

void ModulesToSaveLayer::prepare_unload(torch::nn::Module& base) {
  const std::shared_ptr<const AdapterSnapshot> state = snapshot();
  if (state->disabled || state->active.empty()) return;
  const torch::nn::Module& copy = *copy_record(*state->active.front()).copy;
  at::NoGradGuard no_grad;
  // A bias-free Linear registers an undefined "bias": nothing to take over there.
  for (const auto& param : parameters_of(copy)) {
    at::Tensor* slot = parameters_of(base).find(param.key());
    if (slot && slot->defined() && param.value().defined()) slot->set_data(param.value());
  }
  for (const auto& buffer : buffers_of(copy)) {
    at::Tensor* slot = buffers_of(base).find(buffer.key());
    if (slot && slot->defined() && buffer.value().defined()) slot->set_data(buffer.value());
  }
}

std::unique_ptr<PendingChange> prepare_modules_to_save(const BaseLayer& base, const std::string& module_name,
                                                       const std::string& adapter, std::shared_ptr<const PeftConfig> config,
                                                       AdapterLayer* existing, const at::Tensor& tied_weight) {
  auto pending = std::make_unique<PendingCopy>();
  pending->copy = copy_layer(base);
  if (!pending->copy) {
    throw UnsupportedLayerError("modules_to_save: '" + module_name +
                                "' is a custom layer; peft-cpp can keep trainable copies of torch::nn::Linear, "
                                "Embedding, Conv1d/2d/3d and LayerNorm layers only");
  }
  if (tied_weight.defined()) {
    // Python's tied copy is a bias-free Linear on the embedding copy's weight.
    if (base.kind != LayerKind::Linear || base.bias().defined() || tied_weight.sizes() != base.weight().sizes()) {
      throw UnsupportedLayerError("modules_to_save with ensure_weight_tying: '" + module_name + "' shares the input "
                                  "embedding's weight but is not a bias-free Linear of its shape, which Python PEFT's "
                                  "tied copy is.");
    }
    replace_tensor(*pending->copy, "weight", tied_weight);
  }
  if (existing) {
    if (existing->peft_type() != "MODULES_TO_SAVE") {
      throw ConfigError("modules_to_save: '" + module_name + "' already carries " + existing->peft_type() +
                        " adapters; a layer cannot be both adapted and saved whole");
    }
    pending->existing = static_cast<ModulesToSaveLayer*>(existing);
  } else {
    check_container_names_free(*base.module, module_name, {"modules_to_save"});
  }
  pending->base = base;
  pending->module_name = module_name;
  pending->adapter = adapter;
  pending->config = std::move(config);
  return pending;
}

std::shared_ptr<torch::nn::Module> prepared_copy(const PendingChange& change) {
  const auto* copy = dynamic_cast<const PendingCopy*>(&change);
  return copy ? copy->copy : nullptr;
}

}  // namespace peft::detail
