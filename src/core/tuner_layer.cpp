#include "core/tuner_layer.h"

#include <algorithm>
#include <ostream>

#include <c10/util/Exception.h>

#include <peft/error.h>

#include "core/sample_routing.h"

namespace peft::detail {

const at::Tensor& AdapterTensor::get() const {
  const TensorMap& map = is_buffer ? buffers_of(*owner) : parameters_of(*owner);
  const at::Tensor* tensor = map.find(name);
  TORCH_INTERNAL_ASSERT(tensor, "adapter tensor '", key, "' vanished from its module");
  return *tensor;
}

std::vector<std::string> TunerLayer::adapter_names() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> names;
  for (const auto& entry : adapters_) names.push_back(entry.first);
  return names;
}

bool TunerLayer::has_adapter(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::any_of(adapters_.begin(), adapters_.end(), [&](const auto& e) { return e.first == name; });
}

std::shared_ptr<const PeftConfig> TunerLayer::config_of(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& entry : adapters_) {
    if (entry.first == name) return entry.second;
  }
  return nullptr;
}

std::vector<std::string> TunerLayer::active_adapters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return active_;
}

bool TunerLayer::disabled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return disabled_;
}

std::vector<std::string> TunerLayer::merged_adapters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return merged_;
}

void TunerLayer::add_adapter_record(const std::string& name, std::shared_ptr<const PeftConfig> config) {
  std::lock_guard<std::mutex> lock(mutex_);
  adapters_.emplace_back(name, std::move(config));
  publish();
}

void TunerLayer::replace_config(const std::string& adapter, std::shared_ptr<const PeftConfig> config) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& entry : adapters_) {
    if (entry.first == adapter) entry.second = config;
  }
}

void TunerLayer::remove_adapter_record(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  adapters_.erase(std::remove_if(adapters_.begin(), adapters_.end(), [&](const auto& e) { return e.first == name; }),
                  adapters_.end());
  active_.erase(std::remove(active_.begin(), active_.end(), name), active_.end());
  publish();
}

void TunerLayer::set_active_adapters(torch::nn::Module& base, const std::vector<std::string>& names,
                                     bool inference_mode) {
  std::lock_guard<std::mutex> lock(mutex_);
  active_ = names;
  publish();
  // requires_grad follows the active set, as in Python PEFT's set_adapter.
  for (const auto& entry : adapters_) {
    const bool trainable = !inference_mode && std::find(names.begin(), names.end(), entry.first) != names.end();
    for (const AdapterTensor& tensor : adapter_tensors(base, entry.first)) {
      if (!tensor.is_buffer) tensor.get().set_requires_grad(trainable);
    }
  }
}

void TunerLayer::set_disabled(torch::nn::Module& base, bool disabled) {
  std::lock_guard<std::mutex> lock(mutex_);
  disabled_ = disabled;
  publish();
  // Python PEFT's enable_adapters: disabling freezes every adapter, enabling makes the active ones train.
  for (const auto& entry : adapters_) {
    const bool trainable = !disabled && std::find(active_.begin(), active_.end(), entry.first) != active_.end();
    for (const AdapterTensor& tensor : adapter_tensors(base, entry.first)) {
      if (!tensor.is_buffer) tensor.get().set_requires_grad(trainable);
    }
  }
}

std::unique_ptr<PendingChange> TunerLayer::prepare_merge(torch::nn::Module&, const std::vector<std::string>&, bool) {
  throw Error(std::string(peft_type()) + " adapters cannot be merged into the base weights.");
}

const SampleRouting* TunerLayer::sample_routing() const {
  const SampleRouting* routing = current_sample_routing();
  return routing && routing->layers.count(this) ? routing : nullptr;
}

std::vector<AdapterTensor> TunerLayer::adapter_tensors(const torch::nn::Module& base,
                                                       const std::string& adapter) const {
  std::vector<AdapterTensor> out;
  const ChildMap& children = children_of(base);
  for (const std::string& container_name : checkpoint_container_names()) {
    const auto* container = children.find(container_name);
    if (!container) continue;
    torch::nn::Module& dict = **container;
    // A ParameterDict holds the adapter's tensor directly under the adapter name.
    if (parameters_of(dict).contains(adapter)) {
      out.push_back({checkpoint_key(container_name), container_name + "." + adapter, &dict, adapter, false});
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
  }
  return out;
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

TunerLayer* find_tuner_among(const ChildMap& children) {
  for (const auto& child : children) {
    if (auto* anchor = dynamic_cast<TunerAnchor*>(child.value().get())) return anchor->tuner.get();
  }
  return nullptr;
}

void attach_containers(torch::nn::Module& base,
                       const std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>& containers) {
  for (const auto& [name, module] : containers) base.register_module(name, module);
}

void detach_containers(torch::nn::Module& base, const std::vector<std::string>& container_names) {
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

}  // namespace peft::detail
