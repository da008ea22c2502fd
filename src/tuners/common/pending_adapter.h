#pragma once

// Preparing and committing one adapter on one layer, for the methods built on DictAdapterLayer.

#include <functional>
#include <memory>

#include "core/method.h"
#include "tuners/common/dict_adapter_layer.h"

namespace peft::detail {

/// The base of a method's AdapterBuilder: the method and the injection's config.
template <class Config>
class BuilderOf : public AdapterBuilder {
 public:
  BuilderOf(const Method& method, Config& config) : method_(method), config_(config) {}

 protected:
  const Method& method_;
  Config& config_;
};

/// Device and dtype for a new adapter's tensors: the layer's (float32 for a non-float layer), or the meta
/// device with `low_cpu_mem_usage` or when the layer itself lives there.
at::TensorOptions adapter_options(const BaseLayer& base, bool low_cpu_mem_usage);

/// Whether tensors made with these options hold values (so initialising them means something).
inline bool materialised(const at::TensorOptions& options) { return !options.device().is_meta(); }

/// The change that adds `adapter` to `request`'s layer: into the layer's existing DictAdapterLayer, or into
/// a new one made by `make_layer` (whose containers are then attached).
std::unique_ptr<PendingChange> prepare_dict_adapter(const LayerRequest& request,
                                                    const std::function<std::shared_ptr<DictAdapterLayer>()>& make_layer,
                                                    DictAdapterLayer::NewAdapter adapter);

/// The same for a layer class constructed from (request, method): prepare_dict_adapter<HRALayer>(...).
template <class Layer>
std::unique_ptr<PendingChange> prepare_dict_adapter(const LayerRequest& request, const Method& method,
                                                    DictAdapterLayer::NewAdapter adapter) {
  return prepare_dict_adapter(request, [&] { return std::make_shared<Layer>(request, method); }, std::move(adapter));
}

}  // namespace peft::detail
