#pragma once

// The adapters of a whole model, read off its adapted layers (the model object itself holds nothing).

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include <peft/config.h>

#include "core/adapter_layer.h"

namespace peft::detail {

struct AdaptedLayer {
  std::string name;
  torch::nn::Module* module;
  AdapterLayer* adapters;
};

/// Every adapted layer, in module order.
std::vector<AdaptedLayer> adapted_layers(const torch::nn::Module& model);

class ModelAdapters {
 public:
  bool empty() const { return names_.empty(); }
  bool has(const std::string& name) const;
  /// Adapter names in the order they were first seen.
  const std::vector<std::string>& names() const { return names_; }
  std::string names_text() const;
  std::shared_ptr<const PeftConfig> config(const std::string& name) const;
  std::vector<std::shared_ptr<const PeftConfig>> configs() const { return configs_; }

  void add(const std::string& name, std::shared_ptr<const PeftConfig> config);

 private:
  std::vector<std::string> names_;
  std::vector<std::shared_ptr<const PeftConfig>> configs_;
};

ModelAdapters collect_adapters(const torch::nn::Module& model);

/// The config of `adapter`, or AdapterNameError listing the adapters the model has.
std::shared_ptr<const PeftConfig> require_adapter(const torch::nn::Module& model, const std::string& adapter);

/// After an injection: the new adapter becomes the only active one on every adapted layer, everything but
/// adapter tensors stops requiring grad, and the biases named by the config's `bias` train (Python PEFT's
/// set_adapter + _mark_only_adapters_as_trainable).
void activate_after_injection(torch::nn::Module& model, const std::string& adapter, const PeftConfig& config);

/// Every parameter of the model itself (not of adapter containers) stops requiring grad.
void freeze_base(torch::nn::Module& model);
/// The biases `bias` names train: "none", "all" (every parameter named bias), or "<method>_only" (the biases of
/// the layers carrying `peft_type` adapters).
void train_biases(torch::nn::Module& model, const std::vector<AdaptedLayer>& layers, const std::string& bias,
                  const std::string& peft_type);

}  // namespace peft::detail
