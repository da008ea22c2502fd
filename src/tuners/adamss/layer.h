#pragma once

#include <string>
#include <vector>

#include <peft/tuners/adamss/config.h>

#include "core/method.h"
#include "tuners/common/dict_adapter_layer.h"

namespace peft::detail::adamss {

/// Builds AdaMSS adapters for one injection.
std::unique_ptr<AdapterBuilder> make_builder(const Method& method, AdamssConfig& config);

/// Containers of an AdaMSS layer: ModuleDicts of ParameterLists (one A_i / B_i per subspace), the projection.
enum Containers : size_t { kA = 0, kB = 1, kNewB = 2 };

/// An adapted layer carrying the adapter, by its dotted name.
struct AdamssLayerRef {
  std::string name;
  DictAdapterLayer* layer;
};
/// The AdaMSS layers of `model` that carry `adapter`, in module order.
std::vector<AdamssLayerRef> adamss_layers(const torch::nn::Module& model, const std::string& adapter);
/// The adapter's subspace count on `layer`.
int64_t subspace_count(const DictAdapterLayer& layer, const std::string& adapter);
/// A_i (container kA) or B_i (kB) of subspace `i` (the tensor in place now).
at::Tensor subspace_tensor(const DictAdapterLayer& layer, size_t container, const std::string& adapter, int64_t i);

}  // namespace peft::detail::adamss
