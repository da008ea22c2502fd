#include "tuners/common/pending_adapter.h"

#include <peft/error.h>

namespace peft::detail {
namespace {

class PendingDictAdapter final : public PendingChange {
 public:
  BaseLayer base;
  DictAdapterLayer* existing = nullptr;
  std::shared_ptr<DictAdapterLayer> fresh;  // when the layer has no adapters yet
  DictAdapterLayer::NewAdapter adapter;
  std::shared_ptr<const PeftConfig> config;

  const DictAdapterLayer& target() const { return existing ? *existing : *fresh; }

  std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_shapes() const override {
    const auto& containers = target().container_list();
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

  std::vector<std::pair<std::string, c10::ScalarType>> checkpoint_integer_dtypes() const override {
    const auto& containers = target().container_list();
    std::vector<std::pair<std::string, c10::ScalarType>> out;
    for (const auto& [index, tensor] : adapter.tensors) {
      const bool integer = !tensor.is_floating_point() && !tensor.is_complex();
      if (containers[index].in_checkpoint && integer) out.emplace_back(containers[index].name, tensor.scalar_type());
    }
    return out;
  }

  void commit() override {
    for (auto& [index, module] : adapter.modules) module->train(base.module->is_training());
    if (existing) {
      existing->add(std::move(adapter), config);
      return;
    }
    attach_containers(*base.module, DictAdapterLayer::make_containers(fresh));
    fresh->add(std::move(adapter), config);
  }
};

}  // namespace

at::TensorOptions adapter_options(const BaseLayer& base, bool low_cpu_mem_usage) {
  const at::Tensor weight = base.weight();
  const c10::ScalarType dtype = weight.is_floating_point() ? weight.scalar_type() : at::kFloat;
  const bool meta = low_cpu_mem_usage || weight.device().is_meta();
  return at::TensorOptions().dtype(dtype).device(meta ? at::Device(at::kMeta) : weight.device());
}

std::unique_ptr<PendingChange> prepare_dict_adapter(const LayerRequest& request,
                                                    const std::function<std::shared_ptr<DictAdapterLayer>()>& make_layer,
                                                    DictAdapterLayer::NewAdapter adapter) {
  auto pending = std::make_unique<PendingDictAdapter>();
  if (request.existing) {
    // Injection checked that the layer's adapters are this method's.
    pending->existing = dynamic_cast<DictAdapterLayer*>(request.existing);
    TORCH_INTERNAL_ASSERT(pending->existing, "layer '", request.module_name, "' carries another kind of adapter layer");
  } else {
    pending->fresh = make_layer();
    check_container_names_free(*request.base.module, request.module_name, pending->fresh->container_names());
  }
  pending->base = request.base;
  pending->adapter = std::move(adapter);
  pending->config = request.config;
  return pending;
}

}  // namespace peft::detail
