#include "tuners/common/pending_adapter.h"

#include <peft/error.h>

namespace peft::detail {
namespace {

class PendingDictAdapter final : public PendingChange {
 public:
  BaseLayer base;
  DictAdapterLayer* existing = nullptr;
  std::function<std::shared_ptr<DictAdapterLayer>()> make_layer;
  DictAdapterLayer::NewAdapter adapter;
  std::shared_ptr<const PeftConfig> config;
  std::vector<DictAdapterLayer::Container> containers;

  std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_shapes() const override {
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    for (const auto& [index, tensor] : adapter.tensors) {
      if (containers[index].in_checkpoint) out.emplace_back(containers[index].name, tensor.sizes().vec());
    }
    for (const auto& [index, module] : adapter.modules) {
      for (const auto& param : module->named_parameters()) {
        out.emplace_back(containers[index].name + "." + param.key(), param.value().sizes().vec());
      }
    }
    return out;
  }

  void commit() override {
    for (auto& [index, module] : adapter.modules) module->train(base.module->is_training());
    if (existing) {
      existing->add(std::move(adapter), config);
      return;
    }
    std::shared_ptr<DictAdapterLayer> layer = make_layer();
    attach_containers(*base.module, DictAdapterLayer::make_containers(layer));
    layer->add(std::move(adapter), config);
  }
};

}  // namespace

at::TensorOptions adapter_options(const BaseLayer& base, bool low_cpu_mem_usage) {
  const at::Tensor weight = base.weight();
  const c10::ScalarType dtype = weight.is_floating_point() ? weight.scalar_type() : at::kFloat;
  const bool meta = low_cpu_mem_usage || weight.device().is_meta();
  return at::TensorOptions().dtype(dtype).device(meta ? at::Device(at::kMeta) : weight.device());
}

std::unique_ptr<PendingChange> prepare_dict_adapter(const LayerRequest& request, const char* peft_type,
                                                    const std::vector<DictAdapterLayer::Container>& containers,
                                                    std::function<std::shared_ptr<DictAdapterLayer>()> make_layer,
                                                    DictAdapterLayer::NewAdapter adapter) {
  auto pending = std::make_unique<PendingDictAdapter>();
  if (request.existing) {
    if (std::string(request.existing->peft_type()) != peft_type) {
      throw UnsupportedLayerError("Cannot add a " + std::string(peft_type) + " adapter to '" + request.module_name +
                                  "': it already carries " + request.existing->peft_type() +
                                  " adapters, and peft-cpp keeps one adapter method per layer.");
    }
    pending->existing = dynamic_cast<DictAdapterLayer*>(request.existing);
  } else {
    std::vector<std::string> names;
    for (const auto& c : containers) names.push_back(c.name);
    check_container_names_free(*request.base.module, request.module_name, names);
  }
  pending->base = request.base;
  pending->make_layer = std::move(make_layer);
  pending->adapter = std::move(adapter);
  pending->config = request.config;
  pending->containers = containers;
  return pending;
}

void unsupported_layer(const char* method, const torch::nn::Module& module, const char* supported) {
  throw UnsupportedLayerError("Target module " + short_repr(module) + " is not supported by " + method +
                              ". Currently, only the following modules are supported: " + supported + ".");
}

}  // namespace peft::detail
