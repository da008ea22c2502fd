#include "core/model_adapters.h"

#include <algorithm>

#include <peft/error.h>

#include "core/module_walk.h"

namespace peft::detail {

std::vector<AdaptedLayer> adapted_layers(const torch::nn::Module& model) {
  std::vector<AdaptedLayer> out;
  walk_modules(model, [&](const std::string& name, const torch::nn::Module& module) {
    if (AdapterLayer* adapters = adapter_layer_of(module)) {
      out.push_back({name, const_cast<torch::nn::Module*>(&module), adapters});
    }
  });
  return out;
}

bool ModelAdapters::has(const std::string& name) const {
  return std::find(names_.begin(), names_.end(), name) != names_.end();
}

std::string ModelAdapters::names_text() const {
  std::string out = "[";
  for (size_t i = 0; i < names_.size(); ++i) out += (i ? ", '" : "'") + names_[i] + "'";
  return out + "]";
}

std::shared_ptr<const PeftConfig> ModelAdapters::config(const std::string& name) const {
  for (size_t i = 0; i < names_.size(); ++i) {
    if (names_[i] == name) return configs_[i];
  }
  return nullptr;
}

void ModelAdapters::add(const std::string& name, std::shared_ptr<const PeftConfig> config) {
  if (has(name)) return;
  names_.push_back(name);
  configs_.push_back(std::move(config));
}

ModelAdapters collect_adapters(const torch::nn::Module& model) {
  ModelAdapters adapters;
  for (const AdaptedLayer& layer : adapted_layers(model)) {
    for (const std::string& name : layer.adapters->adapter_names()) adapters.add(name, layer.adapters->config_of(name));
  }
  return adapters;
}

std::shared_ptr<const PeftConfig> require_adapter(const torch::nn::Module& model, const std::string& adapter) {
  const ModelAdapters adapters = collect_adapters(model);
  if (auto config = adapters.config(adapter)) return config;
  throw AdapterNameError("No adapter named '" + adapter + "' in the model; it has " +
                         (adapters.empty() ? std::string("no adapters") : "the adapters " + adapters.names_text()) + ".");
}

void freeze_base(torch::nn::Module& model) {
  // The walk does not enter adapter containers, so this costs the same however many adapters the model has.
  walk_modules(model, [](const ModuleVisit& v) {
    for (auto& param : parameters_of(v.module)) {
      if (param.value().defined() && param.value().requires_grad()) param.value().set_requires_grad(false);
    }
  });
}

void train_biases(torch::nn::Module& model, const std::vector<AdaptedLayer>& layers, const std::string& bias,
                  const std::string& peft_type) {
  if (bias == "all") {
    for (const auto& param : model.named_parameters()) {
      const std::string& key = param.key();
      if (key == "bias" || (key.size() > 5 && key.compare(key.size() - 5, 5, ".bias") == 0)) {
        param.value().set_requires_grad(true);
      }
    }
  } else if (bias != "none") {  // "<method>_only": the biases of the layers this method adapted
    for (const AdaptedLayer& layer : layers) {
      if (peft_type != layer.adapters->peft_type()) continue;
      const std::optional<BaseLayer> base = describe_layer(*layer.module);
      const at::Tensor b = base ? base->bias() : at::Tensor();
      if (b.defined()) b.set_requires_grad(true);
    }
  }
}

void activate_after_injection(torch::nn::Module& model, const std::string& adapter, const PeftConfig& config) {
  const std::vector<AdaptedLayer> layers = adapted_layers(model);
  for (const AdaptedLayer& layer : layers) {
    layer.adapters->set_active_adapters(*layer.module, {adapter}, config.inference_mode());
  }
  // Biases train per `bias` unless the adapter is loaded for inference. (Python PEFT leaves them trainable
  // even then; an inference-mode adapter that trains part of the base model is not useful.)
  freeze_base(model);
  train_biases(model, layers, config.inference_mode() ? "none" : config.bias_mode(), config.peft_type());
}

}  // namespace peft::detail
