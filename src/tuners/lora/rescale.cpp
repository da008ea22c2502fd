// rescale_adapter_scale (Python PEFT's helpers.py) as a scope guard.

#include <peft/tuners/lora/rescale.h>

#include <peft/error.h>

#include "core/adapter_layer.h"
#include "core/model_adapters.h"

namespace peft {

RescaleAdapterScale::RescaleAdapterScale(ModuleRef model_ref, double multiplier) : multiplier_(multiplier) {
  // Python grabs every LoraLayer's scaling first; with none, it refuses having changed nothing.
  for (const detail::AdaptedLayer& layer : detail::adapted_layers(model_ref.get())) {
    auto scalings = layer.adapters->lora_scalings();
    if (!scalings) continue;
    std::shared_ptr<detail::AdapterLayer> owner;
    for (const auto& child : detail::children_of(*layer.module)) {
      if (auto* anchor = dynamic_cast<detail::AdapterAnchor*>(child.value().get())) {
        owner = anchor->adapters;
        break;
      }
    }
    if (owner) saved_.push_back({std::move(owner), std::move(*scalings)});
  }
  if (saved_.empty()) throw ConfigError("scaling is only supported for models with `LoraLayer`s");
  for (const Saved& s : saved_) {
    for (const auto& [adapter, scaling] : s.scalings) s.layer->set_lora_scaling(adapter, scaling * multiplier);
  }
}

RescaleAdapterScale::~RescaleAdapterScale() {
  for (const Saved& s : saved_) {
    for (const auto& [adapter, scaling] : s.scalings) s.layer->set_lora_scaling(adapter, scaling);
  }
}

}  // namespace peft
