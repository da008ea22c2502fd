// Super-Tuning (Python PEFT's tuners/supertuning): the layer computes with its weight plus each active
// adapter's sparse values scatter-added at their flat positions (chosen by weight magnitude at injection),
// plus, in Supra mode, (lora_alpha / r) B A x. The positions are int32 buffers, left out of checkpoints when the
// layer's first adapter says save_precomputed_indices=false (then they are recomputed from the base weights).

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/scatter_add.h>
#include <ATen/ops/topk.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <peft/error.h>
#include <peft/tuners/supertuning/config.h>

#include "core/tensor_slots.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/supertuning/layer.h"

namespace peft::detail::supertuning {
namespace {

constexpr size_t kValues = 0, kIndices = 1, kLoraA = 2, kLoraB = 3, kDropout = 4;

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  int64_t rank = 0;  // 0: no LoRA pair (Super mode)
  double alpha = 0;
  torch::nn::DropoutImpl* dropout = nullptr;  // owned by supertuning_lora_dropout; null for Identity
};

std::vector<DictAdapterLayer::Container> containers(bool save_indices) {
  DictAdapterLayer::Container values{"supertuning_values"};
  DictAdapterLayer::Container indices{"supertuning_indices"};
  indices.holds_buffers = true;
  indices.in_checkpoint = save_indices;  // Python's BufferDict(persistent=save_precomputed_indices)
  DictAdapterLayer::Container lora_a{"supertuning_lora_A", true};
  DictAdapterLayer::Container lora_b{"supertuning_lora_B", true};
  DictAdapterLayer::Container dropout{"supertuning_lora_dropout", true, false};
  return {values, indices, lora_a, lora_b, dropout};
}

class SupertuningLayer final : public DictAdapterLayer {
 public:
  SupertuningLayer(const LayerRequest& request, const Method& method, bool save_indices)
      : DictAdapterLayer(request, method, containers(save_indices)) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active, BaseForward) override {
    const at::Tensor weight = base_layer().weight();
    at::Tensor flat = weight.reshape(-1);
    for (const auto& record : active) flat = add_values(flat, *record, false);
    at::Tensor result = at::linear(x, flat.reshape_as(weight), base_layer().bias());
    for (const auto& record : active) {
      const auto& r = static_cast<const Record&>(*record);
      if (r.rank == 0) continue;
      const at::Tensor& a = lora(kLoraA, r.name);
      const at::Tensor& b = lora(kLoraB, r.name);
      const at::Tensor dropped = (r.dropout ? r.dropout->forward(x) : x).to(a.scalar_type());
      const at::Tensor out = at::linear(at::linear(dropped, a), b);
      result = result + ((r.alpha / static_cast<double>(r.rank)) * out).to(result.scalar_type());
    }
    return result;
  }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    at::Tensor merged = add_values(weight.reshape(-1), record, false).reshape_as(weight);
    if (static_cast<const Record&>(record).rank > 0) merged = merged + lora_delta(record, weight.scalar_type());
    return {merged, bias};
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& record) const override {
    at::Tensor unmerged = weight;
    if (static_cast<const Record&>(record).rank > 0) unmerged = unmerged - lora_delta(record, weight.scalar_type());
    return {add_values(unmerged.reshape(-1), record, true).reshape_as(weight), bias};
  }

 private:
  /// flat.scatter_add(0, indices, values) (or -values).
  at::Tensor add_values(const at::Tensor& flat, const AdapterRecord& record, bool subtract) const {
    const at::Tensor indices = param(kIndices, record.name).to(flat.device(), at::kLong);
    at::Tensor values = param(kValues, record.name).to(flat.scalar_type());
    if (subtract) values = -values;
    return flat.scatter_add(0, indices, values);
  }

  const at::Tensor& lora(size_t index, const std::string& adapter) const { return param(index, adapter); }

  /// (lora_alpha / r) B A, in `dtype`.
  at::Tensor lora_delta(const AdapterRecord& record, c10::ScalarType dtype) const {
    const auto& r = static_cast<const Record&>(record);
    const at::Tensor delta = at::matmul(lora(kLoraB, r.name), lora(kLoraA, r.name));
    return ((r.alpha / static_cast<double>(r.rank)) * delta).to(dtype);
  }
};

class SupertuningBuilder final : public BuilderOf<SupertuningConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    const at::Tensor weight = base.weight().detach();
    const int64_t numel = weight.numel();
    const double sparsity = config_.sparsity();
    const auto count = static_cast<int64_t>(static_cast<double>(numel) * (1.0 - sparsity));
    if (count < 1) {
      throw ConfigError("sparsity=" + nlohmann::json(sparsity).dump() + " leaves no trainable entries for a weight with " +
                        std::to_string(numel) + " elements \u2014 no parameter would be adapted. Lower the sparsity so "
                        "at least one entry is trainable. (layer '" + request.module_name + "')");
    }
    // The support: the flat positions of the largest (or smallest) |W|, int32, on the weight's device. A weight
    // on the meta device has no magnitudes: the positions must then come from a checkpoint.
    at::Tensor indices;
    if (weight.device().is_meta()) {
      indices = at::empty({count}, weight.options().dtype(at::kInt));
    } else {
      at::NoGradGuard no_grad;
      indices = std::get<1>(at::topk(weight.abs().flatten(), count, -1, config_.select_top())).to(at::kInt);
    }

    auto record = std::make_shared<Record>(request.adapter_name);
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    const bool init = materialised(options);
    at::Tensor values = at::empty({count}, options);
    if (init) {
      at::NoGradGuard no_grad;
      if (config_.init_weights()) {
        values.zero_();
      } else {
        values.copy_(at::randn({count}));  // drawn in float32, then cast, as Python's torch.randn
      }
    }
    DictAdapterLayer::NewAdapter adapter{record, {{kValues, values}, {kIndices, indices}}, {}};

    if (config_.r()) {
      const int64_t r = *config_.r();
      record->rank = r;
      record->alpha = config_.lora_alpha().value_or(2.0 * static_cast<double>(r));
      auto a = make_linear(base.in_features, r, false, options);
      auto b = make_linear(r, base.out_features, false, options);
      if (init) {
        at::NoGradGuard no_grad;
        // Python builds two nn.Linear (each draws its default init), then draws A again, then B unless zeroed.
        kaiming_default(a->weight);
        kaiming_default(b->weight);
        kaiming_default(a->weight);
        if (config_.init_weights()) {
          b->weight.zero_();
        } else {
          kaiming_default(b->weight);
        }
      }
      std::shared_ptr<torch::nn::Module> dropout;
      if (config_.lora_dropout() > 0) {
        auto module = std::make_shared<torch::nn::DropoutImpl>(torch::nn::DropoutOptions(config_.lora_dropout()));
        record->dropout = module.get();
        dropout = module;
      } else {
        dropout = std::make_shared<torch::nn::IdentityImpl>();
      }
      adapter.modules = {{kLoraA, a}, {kLoraB, b}, {kDropout, dropout}};
    }
    const bool save_indices = config_.save_precomputed_indices();
    return prepare_dict_adapter(
        request, [&] { return std::make_shared<SupertuningLayer>(request, method_, save_indices); }, std::move(adapter));
  }
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, SupertuningConfig& config) {
  return std::make_unique<SupertuningBuilder>(method, config);
}

}  // namespace peft::detail::supertuning
