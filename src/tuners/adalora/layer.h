#pragma once

// AdaLoRA's layer (Python PEFT's AdaLoraLayer / SVDLinear / SVDConv2d), shared with the rank allocator.

#include <string>
#include <vector>

#include <torch/nn/module.h>

#include <peft/tuners/adalora/config.h>

#include "core/method.h"
#include "tuners/common/dict_adapter_layer.h"

namespace peft::detail::adalora {

enum Slot : size_t { A, B, E, RANKNUM };

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  double scaling = 0;
  double dropout = 0;
};

struct AdaLoraLayerRef {
  std::string name;          // module name in the model
  DictAdapterLayer* layer;   // lora_A / lora_B / lora_E / ranknum by Slot
};

/// Builds AdaLoRA adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, AdaLoraConfig& config);

/// The layers that carry AdaLoRA adapter `adapter`, in module order.
std::vector<AdaLoraLayerRef> adalora_layers(const torch::nn::Module& model, const std::string& adapter);

}  // namespace peft::detail::adalora
