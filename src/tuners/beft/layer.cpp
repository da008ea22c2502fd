// BEFT (Python PEFT's tuners/beft): y = W x + b + sum of the active adapters' (1, out) offsets; merging adds
// the offset to the layer's bias, so a layer without a bias cannot merge.

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/randn.h>
#include <c10/util/Exception.h>

#include <peft/error.h>
#include <peft/tuners/beft/config.h>

#include "tuners/common/pending_adapter.h"
#include "tuners/beft/layer.h"

namespace peft::detail::beft {
namespace {

class BeftLayer final : public DictAdapterLayer {
 public:
  BeftLayer(const LayerRequest& request, const Method& method) : DictAdapterLayer(request, method, {{"beft_bias"}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    at::Tensor offset;
    for (const auto& record : active) {
      const at::Tensor current = param(0, record->name).flatten();
      offset = offset.defined() ? offset + current : current;
    }
    const at::Tensor result = base_forward(x);
    if (!offset.defined()) return result;
    return (result + offset).to(result.scalar_type());
  }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    if (!bias.defined()) throw MergeError("Base layer has no bias, cannot merge bias adapter " + record.name);
    return {weight, (bias + param(0, record.name).reshape(bias.sizes())).to(bias.scalar_type())};
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& record) const override {
    if (!bias.defined()) throw MergeError("Base layer has no bias, cannot unmerge bias adapter " + record.name);
    return {weight, (bias - param(0, record.name).reshape(bias.sizes())).to(bias.scalar_type())};
  }

  bool merge_touches_bias() const override { return true; }
};

class BeftBuilder final : public BuilderOf<BeftConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    if (!base.bias().defined()) {
      TORCH_WARN("Detected that the base layer has no bias term. Note you cannot merge the BEFT adapter into the base "
                 "layer.");
    }
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor offset = at::empty({1, base.out_features}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      // Drawn in float32 from the global generator whatever init_weights says, as Python does.
      offset.copy_(at::randn({1, base.out_features}));
      if (config_.init_weights()) offset.zero_();
    }
    DictAdapterLayer::NewAdapter adapter;
    adapter.record = std::make_shared<AdapterRecord>(request.adapter_name);
    adapter.tensors.emplace_back(0, offset);
    return prepare_dict_adapter<BeftLayer>(request, method_, std::move(adapter));
  }
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, BeftConfig& config) {
  return std::make_unique<BeftBuilder>(method, config);
}

}  // namespace peft::detail::beft
