#include "core/adapter_layer.h"

#include <algorithm>
#include <ostream>
#include <unordered_map>

#include <c10/util/Exception.h>

#include <peft/error.h>

#include "core/sample_routing.h"
#include "routing/router.h"

namespace peft::detail {
namespace {

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// The weights of adapted layers, so that a LibTorch clone() of one can be told apart (see
// refuse_clone_of_adapted_layer). Entries are checked against the live anchor before they count.
struct AdaptedWeights {
  std::mutex mutex;
  std::unordered_map<const c10::TensorImpl*, std::weak_ptr<torch::nn::Module>> anchors;
};
AdaptedWeights& adapted_weights() {
  static AdaptedWeights registry;
  return registry;
}

}  // namespace

const at::Tensor& AdapterTensor::get() const {
  const TensorMap& map = is_buffer ? buffers_of(*owner) : parameters_of(*owner);
  const at::Tensor* tensor = map.find(name);
  TORCH_INTERNAL_ASSERT(tensor, "adapter tensor '", key, "' vanished from its module");
  return *tensor;
}

const AdapterRecord* AdapterSnapshot::find(const std::string& name) const {
  for (const auto& record : all) {
    if (record->name == name) return record.get();
  }
  return nullptr;
}

std::tuple<at::Tensor, at::Tensor> AdapterLayer::forward_attention(torch::nn::MultiheadAttentionImpl&,
                                                                   const AttentionCall&, AttentionForward) {
  throw Error(peft_type() + " adapters do not adapt torch::nn::MultiheadAttention ('" + module_name_ + "').");
}

AdapterLayer::AdapterLayer(const BaseLayer& base, std::string module_name)
    : base_(base), module_name_(std::move(module_name)), snapshot_(std::make_shared<AdapterSnapshot>()) {}

std::vector<std::string> AdapterLayer::adapter_names() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> names;
  for (const auto& entry : adapters_) names.push_back(entry.first);
  return names;
}

bool AdapterLayer::has_adapter(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::any_of(adapters_.begin(), adapters_.end(), [&](const auto& e) { return e.first == name; });
}

std::shared_ptr<const PeftConfig> AdapterLayer::config_of(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& entry : adapters_) {
    if (entry.first == name) return entry.second;
  }
  return nullptr;
}

std::shared_ptr<const AdapterRecord> AdapterLayer::record(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = records_.find(name);
  return it == records_.end() ? nullptr : it->second;
}

std::vector<std::string> AdapterLayer::active_adapters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return active_;
}

bool AdapterLayer::disabled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return disabled_;
}

std::vector<std::string> AdapterLayer::merged_adapters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return merged_;
}

void AdapterLayer::add_adapter(std::shared_ptr<const AdapterRecord> record, std::shared_ptr<const PeftConfig> config) {
  std::lock_guard<std::mutex> lock(mutex_);
  adapters_.emplace_back(record->name, std::move(config));
  records_[record->name] = std::move(record);
  publish();
}

void AdapterLayer::replace_config(const std::string& adapter, std::shared_ptr<const PeftConfig> config) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& entry : adapters_) {
    if (entry.first == adapter) entry.second = config;
  }
}

void AdapterLayer::replace_record(std::shared_ptr<const AdapterRecord> record) {
  std::lock_guard<std::mutex> lock(mutex_);
  records_[record->name] = std::move(record);
  publish();
}

void AdapterLayer::remove_adapter_record(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  adapters_.erase(std::remove_if(adapters_.begin(), adapters_.end(), [&](const auto& e) { return e.first == name; }),
                  adapters_.end());
  records_.erase(name);
  active_.erase(std::remove(active_.begin(), active_.end(), name), active_.end());
  publish();
}

void AdapterLayer::publish() {
  auto snapshot = std::make_shared<AdapterSnapshot>();
  for (const std::string& name : active_) {
    auto it = records_.find(name);
    if (it != records_.end()) snapshot->active.push_back(it->second);
  }
  for (const auto& entry : adapters_) {
    auto it = records_.find(entry.first);
    if (it != records_.end()) snapshot->all.push_back(it->second);
  }
  snapshot->disabled = disabled_;
  snapshot->merged = !merged_.empty();
  std::atomic_store(&snapshot_, std::shared_ptr<const AdapterSnapshot>(std::move(snapshot)));
}

void AdapterLayer::set_trainable(torch::nn::Module& base, const std::vector<std::string>& trainable) {
  for (const auto& entry : adapters_) {
    const bool wanted = contains(trainable, entry.first);
    for (const AdapterTensor& tensor : adapter_tensors(base, entry.first)) {
      // Only a changing flag is written: autograd reads it, without a lock, in forwards on other threads.
      const bool trains = wanted && !tensor.frozen;
      if (!tensor.is_buffer && tensor.get().requires_grad() != trains) tensor.get().set_requires_grad(trains);
    }
  }
}

void AdapterLayer::set_active_adapters(torch::nn::Module& base, const std::vector<std::string>& names,
                                       bool inference_mode) {
  std::lock_guard<std::mutex> lock(mutex_);
  active_ = names;
  inference_mode_ = inference_mode;
  publish();
  // requires_grad follows the active set, as in Python PEFT's set_adapter.
  set_trainable(base, disabled_ || inference_mode ? std::vector<std::string>{} : names);
}

void AdapterLayer::set_disabled(torch::nn::Module& base, bool disabled) {
  std::lock_guard<std::mutex> lock(mutex_);
  disabled_ = disabled;
  publish();
  set_trainable(base, disabled || inference_mode_ ? std::vector<std::string>{} : active_);
}

std::unique_ptr<PendingChange> AdapterLayer::prepare_merge(torch::nn::Module&, const std::vector<std::string>&, bool) {
  throw MergeError(peft_type() + " adapters cannot be merged into the base weights.");
}

const SampleRouting* AdapterLayer::sample_routing() const {
  const SampleRouting* routing = current_sample_routing();
  return routing && routing->layers.count(this) ? routing : nullptr;
}

std::vector<AdapterTensor> AdapterLayer::adapter_tensors(const torch::nn::Module& base,
                                                         const std::string& adapter) const {
  std::vector<AdapterTensor> out;
  if (tensors_held_elsewhere(adapter)) return out;
  const std::string submodule = checkpoint_submodule(adapter);
  auto checkpoint_key = [&](std::string key) {
    key = this->checkpoint_key(std::move(key));
    return submodule.empty() ? key : submodule + "." + key;
  };
  const ChildMap& children = children_of(base);
  for (const std::string& container_name : checkpoint_container_names()) {
    const auto* container = children.find(container_name);
    if (!container) continue;
    const size_t first = out.size();
    torch::nn::Module& dict = **container;
    // A ParameterDict holds the adapter's tensor directly under the adapter name.
    if (parameters_of(dict).contains(adapter)) {
      out.push_back({checkpoint_key(container_name), container_name + "." + adapter, &dict, adapter, false});
      mark_frozen(out, first, adapter, container_name);
      continue;
    }
    // A BufferDict: the same, as a buffer.
    if (buffers_of(dict).contains(adapter)) {
      out.push_back({checkpoint_key(container_name), container_name + "." + adapter, &dict, adapter, true});
      continue;
    }
    // A ModuleDict holds a module per adapter; take every tensor of that module's subtree.
    const auto* entry = children_of(dict).find(adapter);
    if (!entry) continue;
    for (const auto& item : (*entry)->named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
      const std::string sub = item.key().empty() ? "" : "." + item.key();
      const std::string prefix = container_name + sub + ".";
      const std::string model_prefix = container_name + "." + adapter + sub + ".";
      for (const auto& param : parameters_of(*item.value())) {
        if (!param.value().defined()) continue;
        out.push_back({checkpoint_key(prefix + param.key()), model_prefix + param.key(), item.value().get(),
                       param.key(), false});
      }
      for (const auto& buffer : buffers_of(*item.value())) {
        if (!buffer.value().defined()) continue;
        out.push_back({checkpoint_key(prefix + buffer.key()), model_prefix + buffer.key(), item.value().get(),
                       buffer.key(), true});
      }
    }
    mark_frozen(out, first, adapter, container_name);
  }
  return out;
}

void AdapterLayer::mark_frozen(std::vector<AdapterTensor>& tensors, size_t first, const std::string& adapter,
                               const std::string& container) const {
  if (!frozen_container(adapter, container)) return;
  for (size_t i = first; i < tensors.size(); ++i) tensors[i].frozen = true;
}

void ParameterDictImpl::pretty_print(std::ostream& stream) const {
  stream << "torch::nn::ParameterDict(";
  bool first = true;
  for (const auto& item : parameters_) {
    stream << (first ? "" : ", ") << "(" << item.key() << "): Parameter containing: [" << item.value().scalar_type()
           << " of size " << item.value().sizes() << "]";
    first = false;
  }
  stream << ")";
}

void BufferDictImpl::set(const std::string& key, const at::Tensor& tensor) {
  if (at::Tensor* slot = buffers_of(*this).find(key)) {
    *slot = tensor;
    return;
  }
  register_buffer(key, tensor);
}

void BufferDictImpl::to(torch::Dtype dtype, bool non_blocking) {
  for (auto& item : buffers_of(*this)) {
    at::Tensor& buffer = item.value();
    if (buffer.is_floating_point()) buffer.set_data(buffer.to(dtype, non_blocking));
  }
}

void BufferDictImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  for (auto& item : buffers_of(*this)) {
    at::Tensor& buffer = item.value();
    buffer.set_data(buffer.to(device, buffer.is_floating_point() ? dtype : buffer.scalar_type(), non_blocking));
  }
}

void BufferDictImpl::erase(const std::string& key) {
  TensorMap& buffers = buffers_of(*this);
  if (buffers.contains(key)) buffers.erase(key);
}

const at::Tensor* BufferDictImpl::find(const std::string& key) const { return buffers_of(*this).find(key); }

void BufferDictImpl::pretty_print(std::ostream& stream) const {
  stream << "BufferDict(";
  bool first = true;
  for (const auto& item : buffers_of(*this)) {
    stream << (first ? "" : ", ") << "(" << item.key() << "): Buffer containing: [" << item.value().scalar_type()
           << " of size " << item.value().sizes() << "]";
    first = false;
  }
  stream << ")";
}

AdapterLayer* adapter_layer_among(const ChildMap& children) {
  for (const auto& child : children) {
    if (auto* anchor = dynamic_cast<AdapterAnchor*>(child.value().get())) return anchor->adapters.get();
  }
  return nullptr;
}

namespace {

// Why a forward through `adapters` cannot compute: a tensor that was never loaded (meta device), or nothing.
void explain_meta_tensors(AdapterLayer& adapters, torch::nn::Module& base) {
  const at::Tensor weight = adapters.base_layer().weight();
  if (weight.defined() && weight.device().is_meta()) {
    throw Error("Layer '" + adapters.module_name() + "' has its weight on the meta device: load the base model's "
                "weights (e.g. peft::assign_tensors) before running it.");
  }
  for (const std::string& name : adapters.active_adapters()) {
    for (const AdapterTensor& t : adapters.adapter_tensors(base, name)) {
      if (t.get().device().is_meta()) {
        throw Error("Adapter '" + name + "' of layer '" + adapters.module_name() + "' has no values: '" + t.model_key +
                    "' is still on the meta device (the adapter was injected with low_cpu_mem_usage and never "
                    "loaded). Load its weights with set_peft_model_state_dict(model, state_dict, \"" + name +
                    "\", /*low_cpu_mem_usage=*/true) or use load_adapter.");
      }
    }
  }
}

}  // namespace

at::Tensor run_adapters(AdapterLayer& adapters, torch::nn::Module& base, const at::Tensor& input,
                        BaseForward base_forward) {
  at::Tensor output;
  try {
    output = adapters.forward(base, input, base_forward);
  } catch (const c10::Error&) {
    explain_meta_tensors(adapters, base);  // throws when it finds the cause
    throw;
  }
  // LibTorch computes with a meta operand without complaint and hands back a meta result, which would only
  // fail in some later, unrelated operation.
  if (output.defined() && output.device().is_meta() && input.defined() && !input.device().is_meta()) {
    explain_meta_tensors(adapters, base);
  }
  return output;
}

void attach_containers(torch::nn::Module& base,
                       const std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>& containers) {
  for (const auto& [name, module] : containers) base.register_module(name, module);
  const at::Tensor* weight = parameters_of(base).find("weight");
  if (weight && weight->defined() && !containers.empty()) {
    AdaptedWeights& registry = adapted_weights();
    std::lock_guard<std::mutex> lock(registry.mutex);
    registry.anchors[weight->unsafeGetTensorImpl()] = containers.front().second;
  }
}

void weight_replaced(torch::nn::Module& base, const at::Tensor& old_weight) {
  const ChildMap& children = children_of(base);
  const at::Tensor* weight = parameters_of(base).find("weight");
  if (children.is_empty() || !adapter_layer_among(children) || !weight) return;
  AdaptedWeights& registry = adapted_weights();
  std::lock_guard<std::mutex> lock(registry.mutex);
  auto it = registry.anchors.find(old_weight.unsafeGetTensorImpl());
  if (it == registry.anchors.end()) return;
  std::weak_ptr<torch::nn::Module> anchor = it->second;
  registry.anchors.erase(it);
  registry.anchors[weight->unsafeGetTensorImpl()] = anchor;
}

void detach_containers(torch::nn::Module& base, const std::vector<std::string>& container_names) {
  const at::Tensor* weight = parameters_of(base).find("weight");
  if (weight && weight->defined()) {
    AdaptedWeights& registry = adapted_weights();
    std::lock_guard<std::mutex> lock(registry.mutex);
    registry.anchors.erase(weight->unsafeGetTensorImpl());
  }
  for (const std::string& name : container_names) {
    if (children_of(base).contains(name)) base.unregister_module(name);
  }
}

void check_container_names_free(const torch::nn::Module& base, const std::string& module_name,
                                const std::vector<std::string>& names) {
  const ChildMap& children = children_of(base);
  for (const std::string& name : names) {
    if (children.contains(name)) {
      throw UnsupportedLayerError("Cannot adapt '" + module_name + "': it already has a child module named '" +
                                  name + "', which the adapter needs for its own weights. Rename that child.");
    }
  }
}

void erase_from(torch::nn::ModuleDictImpl& dict, const std::string& key) {
  if (!dict.contains(key)) return;
  dict.pop(key);
  dict.unregister_module(key);
}

namespace {

[[noreturn]] void refuse_clone(const AdapterLayer& adapters, const char* layer_type) {
  throw Error(std::string("Cannot clone the ") + layer_type + " '" + adapters.module_name() + "': it carries " +
              adapters.peft_type() + " adapters, which LibTorch's clone() cannot copy. Clone (or build) the model "
              "first, then inject into the copy; modules that clone their layers, such as "
              "torch::nn::TransformerEncoder(layer, N), need the adapters injected after they are built.");
}

}  // namespace

void refuse_clone_of_adapted_layer(const torch::nn::Module& layer, const at::Tensor& weight, const char* layer_type) {
  // A reset() of the adapted layer itself (it still has its containers) is not a clone.
  if (!weight.defined() || adapter_layer_of(layer)) return;
  std::shared_ptr<torch::nn::Module> anchor;
  {
    AdaptedWeights& registry = adapted_weights();
    std::lock_guard<std::mutex> lock(registry.mutex);
    auto it = registry.anchors.find(weight.unsafeGetTensorImpl());
    if (it == registry.anchors.end()) return;
    anchor = it->second.lock();
    if (!anchor) {
      registry.anchors.erase(it);
      return;
    }
  }
  const auto* adapters = dynamic_cast<const AdapterAnchor*>(anchor.get());
  if (!adapters || !adapters->adapters) return;
  // The entry may be stale (the layer's weight was replaced since): it counts only if it is still the weight.
  const at::Tensor current = adapters->adapters->base_layer().weight();
  if (!current.defined() || current.unsafeGetTensorImpl() != weight.unsafeGetTensorImpl()) return;
  refuse_clone(*adapters->adapters, layer_type);
}

void refuse_clone_of_adapted_layer(const torch::nn::Module& layer, const char* layer_type) {
  if (const AdapterLayer* adapters = adapter_layer_of(layer)) refuse_clone(*adapters, layer_type);
}

}  // namespace peft::detail
