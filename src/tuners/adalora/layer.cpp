// AdaLoRA (Python PEFT's tuners/adalora): y = W x + (dropout(x) (A * E)^T B^T) * scaling / (ranknum + 1e-5),
// the SVD form of LoRA whose singular values E the rank allocator prunes.

#include "tuners/adalora/layer.h"

#include <ATen/ops/dropout.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/matmul.h>

#include <peft/error.h>
#include <peft/tuners/adalora/config.h>

#include "core/model_adapters.h"
#include "tuners/common/conv_functional.h"
#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"

namespace peft::detail::adalora {
namespace {

class AdaLoraLayer final : public DictAdapterLayer {
 public:
  AdaLoraLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method,
                         {{"lora_A"}, {"lora_B"}, {"lora_E"}, {"ranknum", false, /*in_checkpoint=*/false}}) {}

  // Python's AdaLoraLayer is a LoraLayer: rescale_adapter_scale multiplies its scaling too.
  std::optional<std::vector<std::pair<std::string, double>>> lora_scalings() const override {
    std::vector<std::pair<std::string, double>> out;
    for (const std::string& name : adapter_names()) {
      if (const auto r = record(name)) out.emplace_back(name, static_cast<const Record&>(*r).scaling);
    }
    return out;
  }
  void set_lora_scaling(const std::string& adapter, double scaling) override {
    const auto current = record(adapter);
    if (!current || static_cast<const Record&>(*current).scaling == scaling) return;
    auto changed = std::make_shared<Record>(static_cast<const Record&>(*current));
    changed->scaling = scaling;
    replace_record(std::move(changed));
  }

 protected:
  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    at::Tensor result = base_forward(x);
    const bool training = base.is_training();
    for (const auto& r : active) {
      const auto& record = static_cast<const Record&>(*r);
      const std::string& n = record.name;
      const at::Tensor& a = param(A, n);
      at::Tensor input = x.to(a.scalar_type());
      if (record.dropout > 0) input = at::dropout(input, record.dropout, training);
      const at::Tensor divisor = param(RANKNUM, n) + 1e-5;
      at::Tensor update;
      if (base_layer().is_conv()) {
        const at::Tensor delta = (at::matmul(param(B, n), a * param(E, n)) * record.scaling / divisor)
                                     .reshape(base_layer().weight().sizes());
        update = conv_like(base, kind(), input, delta);
      } else {
        update = at::matmul(at::matmul(input, (a * param(E, n)).t()), param(B, n).t()) * record.scaling / divisor;
      }
      result = result + update.to(result.scalar_type());
    }
    return result;
  }

  at::Tensor delta_weight(const AdapterRecord& r) const override {
    const auto& record = static_cast<const Record&>(r);
    const std::string& n = record.name;
    at::Tensor delta = at::matmul(param(B, n), param(A, n) * param(E, n));
    if (base_layer().fan_in_fan_out) delta = delta.t();
    delta = delta * record.scaling / (param(RANKNUM, n) + 1e-5);
    return delta.reshape(base_layer().weight().sizes());
  }
};

class AdaLoraBuilder final : public BuilderOf<AdaLoraConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    const int64_t in = base.kind == LayerKind::Conv2d ? ungrouped_conv_fan_in(request, method_) : base.in_features;
    const int64_t init_r = config_.init_r();
    int64_t r = init_r;
    // A saved adapter's rank_pattern: the layer keeps only its allocated ranks (ranknum stays init_r, as
    // after Python's resize_modules_by_rank_pattern).
    if (const std::vector<bool>* kept = pattern_for(request.module_name, request.adapter_name)) {
      if (static_cast<int64_t>(kept->size()) != init_r) {
        throw ConfigError("rank_pattern['" + request.module_name + ".lora_E'] has " + std::to_string(kept->size()) +
                          " entries but init_r is " + std::to_string(init_r));
      }
      r = std::count(kept->begin(), kept->end(), true);
    }
    auto record = std::make_shared<Record>(request.adapter_name);
    record->scaling = config_.lora_alpha() > 0 ? config_.lora_alpha() : static_cast<double>(r);
    record->dropout = config_.lora_dropout();

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor a = at::empty({r, in}, options), b = at::empty({base.out_features, r}, options),
               e = at::empty({r, 1}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      if (config_.init_lora_weights()) {
        e.zero_();
        a.normal_(0.0, 0.02);
        b.normal_(0.0, 0.02);
      } else {
        a.normal_(), e.normal_(), b.normal_();
      }
    }
    // ranknum is bookkeeping, never loaded: it holds its value even with low_cpu_mem_usage.
    const at::Tensor ranknum = at::full({1}, static_cast<double>(r > 0 ? init_r : 0), adapter_options(base, false));
    ranknum.set_requires_grad(false);
    DictAdapterLayer::NewAdapter adapter;
    adapter.record = record;
    adapter.tensors = {{A, a}, {B, b}, {E, e}, {RANKNUM, ranknum}};
    return prepare_dict_adapter<AdaLoraLayer>(request, method_, std::move(adapter));
  }

 private:
  const std::vector<bool>* pattern_for(const std::string& module, const std::string& adapter) const {
    if (!config_.rank_pattern()) return nullptr;
    const AdaLoraRankPattern& pattern = *config_.rank_pattern();
    for (const std::string& key : {module + ".lora_E", module + ".lora_E." + adapter}) {
      auto it = pattern.find(key);
      if (it != pattern.end()) return &it->second;
    }
    return nullptr;
  }

};

}  // namespace

std::vector<AdaLoraLayerRef> adalora_layers(const torch::nn::Module& model, const std::string& adapter) {
  std::vector<AdaLoraLayerRef> out;
  for (const AdaptedLayer& layer : adapted_layers(model)) {
    if (layer.adapters->peft_type() != AdaLoraConfig().peft_type() || !layer.adapters->has_adapter(adapter)) continue;
    out.push_back({layer.name, static_cast<DictAdapterLayer*>(layer.adapters)});
  }
  return out;
}

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, AdaLoraConfig& config) {
  return std::make_unique<AdaLoraBuilder>(method, config);
}

}  // namespace peft::detail::adalora
