#include "tuners/common/dict_adapter_layer.h"

#include <ATen/ops/isfinite.h>
#include <ATen/ops/index_copy.h>
#include <ATen/ops/index_select.h>
#include <c10/util/Exception.h>

#include <peft/error.h>

#include "core/sample_routing.h"

namespace peft::detail {

DictAdapterLayer::DictAdapterLayer(const LayerRequest& request, const Method& method, std::vector<Container> containers)
    : AdapterLayer(request.base, request.module_name), method_(method), containers_(std::move(containers)) {}

std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> DictAdapterLayer::make_containers(
    const std::shared_ptr<DictAdapterLayer>& layer) {
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> out;
  for (size_t i = 0; i < layer->containers_.size(); ++i) {
    const Container& c = layer->containers_[i];
    std::shared_ptr<torch::nn::Module> dict;
    if (i == 0) {
      // The anchor owns the layer; the layer keeps raw pointers to its containers (they live as long as it).
      auto anchored = [&](auto anchor) {
        anchor->adapters = layer;
        return std::shared_ptr<torch::nn::Module>(std::move(anchor));
      };
      dict = c.holds_modules   ? anchored(std::make_shared<AnchoredModuleDictImpl>())
             : c.holds_buffers ? anchored(std::make_shared<AnchoredBufferDictImpl>())
                               : anchored(std::make_shared<AnchoredParameterDictImpl>());
    } else if (c.holds_modules) {
      dict = std::make_shared<torch::nn::ModuleDictImpl>();
    } else if (c.holds_buffers) {
      dict = std::make_shared<BufferDictImpl>();
    } else {
      dict = std::make_shared<ParameterDictImpl>();
    }
    layer->dicts_.push_back(dict.get());
    out.emplace_back(c.name, dict);
  }
  return out;
}

std::vector<std::string> DictAdapterLayer::container_names() const {
  std::vector<std::string> names;
  for (const auto& c : containers_) names.push_back(c.name);
  return names;
}

std::vector<std::string> DictAdapterLayer::checkpoint_container_names() const {
  std::vector<std::string> names;
  for (const auto& c : containers_) {
    if (c.in_checkpoint) names.push_back(c.name);
  }
  return names;
}

void DictAdapterLayer::add(NewAdapter adapter, std::shared_ptr<const PeftConfig> config) {
  const std::string name = adapter.record->name;
  for (auto& [index, tensor] : adapter.tensors) {
    if (containers_[index].holds_buffers) {
      dynamic_cast<BufferDictImpl&>(*dicts_[index]).set(name, tensor);
    } else {
      dynamic_cast<torch::nn::ParameterDictImpl&>(*dicts_[index]).insert(name, tensor);
    }
  }
  for (auto& [index, module] : adapter.modules) {
    dynamic_cast<torch::nn::ModuleDictImpl&>(*dicts_[index]).update({{name, module}});
  }
  add_adapter(std::move(adapter.record), std::move(config));
}

void DictAdapterLayer::remove_adapter(torch::nn::Module&, const std::string& name) {
  for (size_t i = 0; i < containers_.size(); ++i) {
    if (containers_[i].holds_modules) {
      erase_from(dynamic_cast<torch::nn::ModuleDictImpl&>(*dicts_[i]), name);
    } else if (containers_[i].holds_buffers) {
      dynamic_cast<BufferDictImpl&>(*dicts_[i]).erase(name);
    } else {
      auto& dict = dynamic_cast<torch::nn::ParameterDictImpl&>(*dicts_[i]);
      if (dict.contains(name)) dict.pop(name);
    }
  }
  remove_adapter_record(name);
}

const at::Tensor& DictAdapterLayer::param(size_t index, const std::string& adapter) const {
  if (containers_[index].holds_modules) {
    const auto* module = children_of(*dicts_[index]).find(adapter);
    TORCH_INTERNAL_ASSERT(module, "adapter '", adapter, "' has no module in ", containers_[index].name);
    return *parameters_of(**module).find("weight");
  }
  const TensorMap& tensors = containers_[index].holds_buffers ? buffers_of(*dicts_[index]) : parameters_of(*dicts_[index]);
  const at::Tensor* tensor = tensors.find(adapter);
  TORCH_INTERNAL_ASSERT(tensor, "adapter '", adapter, "' has no tensor in ", containers_[index].name);
  return *tensor;
}

bool DictAdapterLayer::has_param(size_t index, const std::string& adapter) const {
  if (containers_[index].holds_modules) return children_of(*dicts_[index]).contains(adapter);
  if (containers_[index].holds_buffers) return buffers_of(*dicts_[index]).contains(adapter);
  return parameters_of(*dicts_[index]).contains(adapter);
}

std::shared_ptr<torch::nn::Module> DictAdapterLayer::module(size_t index, const std::string& adapter) const {
  const auto* module = children_of(*dicts_[index]).find(adapter);
  return module ? *module : nullptr;
}

at::Tensor DictAdapterLayer::forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) {
  const std::shared_ptr<const AdapterSnapshot> state = snapshot();
  // Python's order: disabled, then per-sample adapters, then merged, then the active adapters.
  if (supports_per_sample() && !state->disabled) {
    if (const SampleRouting* routing = sample_routing()) return forward_per_sample(base, input, base_forward, *state, *routing);
  }
  if (state->bypass()) return base_forward(input);
  if (sample_routing()) {
    throw ConfigError("Per-sample adapters (AdapterNamesPerSample) are not supported for " + peft_type() + ".");
  }
  return forward_active(base, input, state->active, base_forward);
}

at::Tensor DictAdapterLayer::forward_rows(torch::nn::Module&, const at::Tensor&, const at::Tensor&, const AdapterRecord&) {
  throw ConfigError("Per-sample adapters (AdapterNamesPerSample) are not supported for " + peft_type() + ".");
}

at::Tensor DictAdapterLayer::forward_per_sample(torch::nn::Module& base, const at::Tensor& x, BaseForward base_forward,
                                                const AdapterSnapshot& state, const SampleRouting& routing) {
  // Python PEFT's _check_forward_args and _mixed_batch_forward: each group's rows replaced by its adapter's.
  check_sample_routing(x, routing, state.merged);
  at::Tensor result = base_forward(x);
  for (const auto& [name, rows] : routing.groups) {
    const AdapterRecord* record = state.find(name);
    if (!record) continue;  // "__base__", or an adapter this layer does not have
    const at::Tensor index = rows.device() == x.device() ? rows : rows.to(x.device());
    const at::Tensor updated = forward_rows(base, x.index_select(0, index), result.index_select(0, index), *record);
    result = result.index_copy(0, index, updated.to(result.scalar_type()));
  }
  return result;
}

at::Tensor DictAdapterLayer::delta_weight(const AdapterRecord&) const {
  throw MergeError(peft_type() + " adapters cannot be merged into the base weights.");
}

std::pair<at::Tensor, at::Tensor> DictAdapterLayer::merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                               const AdapterRecord& record) const {
  return {weight + delta_weight(record).to(weight.scalar_type()), bias};
}

std::pair<at::Tensor, at::Tensor> DictAdapterLayer::unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                                 const AdapterRecord& record) const {
  return {weight - delta_weight(record).to(weight.scalar_type()), bias};
}

class PendingDictMerge final : public PendingChange {
 public:
  DictAdapterLayer* layer = nullptr;
  std::vector<std::string> names;
  at::Tensor weight, bias;

  void commit() override {
    at::NoGradGuard no_grad;
    const BaseLayer& base = layer->base_layer();
    base.weight().set_data(weight);
    if (bias.defined()) base.bias().set_data(bias);
    std::lock_guard<std::mutex> lock(layer->mutex_);
    for (const auto& name : names) layer->merged_.push_back(name);
    layer->publish();
  }
};

std::unique_ptr<PendingChange> DictAdapterLayer::prepare_merge(torch::nn::Module&, const std::vector<std::string>& names,
                                                               bool safe_merge) {
  std::vector<std::shared_ptr<const AdapterRecord>> records;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const std::string& name : names) {
      auto it = records_.find(name);
      if (it == records_.end() || std::find(merged_.begin(), merged_.end(), name) != merged_.end()) continue;
      records.push_back(it->second);
    }
  }
  if (records.empty()) return nullptr;
  const BaseLayer& base = base_layer();
  if (base.weight().device().is_meta()) throw MergeError("Cannot merge into a layer whose weight is on the meta device.");
  // New weights are computed aside and written in commit, so a failure anywhere changes nothing.
  at::NoGradGuard no_grad;
  auto pending = std::make_unique<PendingDictMerge>();
  pending->layer = this;
  auto [weight, bias] = detached_weight_and_bias();
  for (const auto& record : records) {
    std::tie(weight, bias) = merge_step(weight, bias, *record);
    if (safe_merge) {
      const bool finite = at::isfinite(weight).all().item<bool>() &&
                          (!merge_touches_bias() || !bias.defined() || at::isfinite(bias).all().item<bool>());
      if (!finite) {
        throw MergeError("NaNs detected in the merged weights. The adapter " + record->name + " seems to be broken");
      }
    }
    pending->names.push_back(record->name);
  }
  pending->weight = weight.contiguous();
  if (merge_touches_bias() && bias.defined()) pending->bias = bias.contiguous();
  return pending;
}

std::pair<at::Tensor, at::Tensor> DictAdapterLayer::detached_weight_and_bias() const {
  const BaseLayer& base = base_layer();
  const at::Tensor bias = base.bias();
  return {base.weight().detach(), bias.defined() ? bias.detach() : bias};
}

void DictAdapterLayer::unmerge(torch::nn::Module&) {
  at::NoGradGuard no_grad;
  std::lock_guard<std::mutex> lock(mutex_);
  if (merged_.empty()) return;
  const BaseLayer& base = base_layer();
  auto [weight, bias] = detached_weight_and_bias();
  while (!merged_.empty()) {
    const std::string name = merged_.back();
    merged_.pop_back();
    auto it = records_.find(name);
    if (it != records_.end()) std::tie(weight, bias) = unmerge_step(weight, bias, *it->second);
  }
  base.weight().set_data(weight.contiguous());
  if (merge_touches_bias() && bias.defined()) base.bias().set_data(bias.contiguous());
  publish();
}

void DictAdapterLayer::unmerge_to_kept_weight(at::Tensor& kept) {
  at::NoGradGuard no_grad;
  std::lock_guard<std::mutex> lock(mutex_);
  if (merged_.empty()) return;
  if (kept.defined()) {
    const at::Tensor weight = base_layer().weight();
    weight.set_data(kept.to(weight.device(), weight.scalar_type()).contiguous());
    kept = at::Tensor();
  }
  merged_.clear();
  publish();
}

}  // namespace peft::detail
