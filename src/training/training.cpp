#include <peft/training.h>

#include <set>
#include <unordered_set>

#include <peft/config.h>
#include <peft/error.h>

#include "core/model_adapters.h"
#include "tuners/modules_to_save/layer.h"

namespace peft {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

void mark_only_adapters_as_trainable(ModuleRef model_ref, const std::optional<std::string>& bias) {
  torch::nn::Module& model = model_ref.get();
  if (bias && *bias != "none" && *bias != "all" && !ends_with(*bias, "_only")) {
    throw ConfigError("Requested bias: " + *bias + ", is not implemented. Use \"none\", \"all\" or \"<method>_only\" "
                      "(e.g. \"lora_only\").");
  }
  const std::vector<detail::AdaptedLayer> layers = detail::adapted_layers(model);
  const detail::ModelAdapters adapters = detail::collect_adapters(model);
  // Each layer keeps its active adapters; only what trains changes (Python's mark switches nothing).
  std::set<std::string> active;
  for (const detail::AdaptedLayer& layer : layers) {
    const std::vector<std::string> names = layer.adapters->active_adapters();
    layer.adapters->set_active_adapters(*layer.module, names, /*inference_mode=*/false);
    if (!detail::is_modules_to_save(*layer.adapters)) active.insert(names.begin(), names.end());
  }
  detail::freeze_base(model);
  for (const std::string& name : active) {
    const std::shared_ptr<const PeftConfig> config = adapters.config(name);
    if (!config) continue;
    const std::string mode = bias ? *bias : config->bias_mode();
    detail::train_biases(model, layers, mode, config->peft_type());  // biases only ever added: several adapters' modes combine
  }
}

StateDict named_trainable_tensors(ConstModuleRef model) {
  StateDict out;
  std::unordered_set<const c10::TensorImpl*> seen;
  for (const auto& item : model.get().named_parameters()) {
    const at::Tensor& t = item.value();
    if (t.defined() && t.requires_grad() && seen.insert(t.unsafeGetTensorImpl()).second) out.insert(item.key(), t);
  }
  return out;
}

std::vector<at::Tensor> trainable_tensors(ConstModuleRef model) {
  std::vector<at::Tensor> out;
  for (const auto& item : named_trainable_tensors(model)) out.push_back(item.value());
  return out;
}

}  // namespace peft
