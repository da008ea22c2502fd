// Model-level adapter operations: each walks the adapted layers and, where it can fail, checks or
// prepares every layer before changing any.

#include <peft/lifecycle.h>

#include <algorithm>
#include <iomanip>
#include <iostream>
#include <set>
#include <sstream>
#include <unordered_set>

#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>

#include <peft/error.h>

#include "core/method.h"
#include "core/model_adapters.h"
#include "core/sample_routing.h"
#include "core/tensor_slots.h"
#include "tuners/modules_to_save/layer.h"

namespace peft {
namespace {

using detail::AdaptedLayer;

std::string joined(const std::vector<std::string>& names, const char* separator) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i ? separator : "") + names[i];
  return out;
}

void require_known(const torch::nn::Module& model, const std::vector<std::string>& names) {
  const detail::ModelAdapters adapters = detail::collect_adapters(model);
  for (const std::string& name : names) {
    if (!adapters.has(name)) {
      throw AdapterNameError("Adapter '" + name + "' not found; the model has " +
                             (adapters.empty() ? std::string("no adapters") : "the adapters " + adapters.names_text()) + ".");
    }
  }
}


bool any_merged(const std::vector<AdaptedLayer>& layers) {
  return std::any_of(layers.begin(), layers.end(), [](const AdaptedLayer& l) { return !l.adapters->merged_adapters().empty(); });
}

void unmerge_all(const std::vector<AdaptedLayer>& layers) {
  for (const AdaptedLayer& layer : layers) layer.adapters->unmerge(*layer.module);
}

// Removes every adapter container from every layer; the layers are plain LibTorch layers afterwards.
void unload_all(torch::nn::Module& model) {
  for (const AdaptedLayer& layer : detail::adapted_layers(model)) {
    layer.adapters->prepare_unload(*layer.module);
    const std::vector<std::string> containers = layer.adapters->container_names();
    detail::detach_containers(*layer.module, containers);  // destroys the AdapterLayer
  }
}

}  // namespace

std::vector<std::string> adapter_names(ConstModuleRef model) { return detail::collect_adapters(*model).names(); }

std::vector<std::string> targeted_module_names(ConstModuleRef model) {
  std::vector<std::string> names;
  for (const AdaptedLayer& layer : detail::adapted_layers(*model)) names.push_back(layer.name);
  return names;
}

std::vector<std::string> active_adapters(ConstModuleRef model_ref) {
  const torch::nn::Module& model = model_ref.get();
  const std::vector<AdaptedLayer> layers = detail::adapted_layers(model);
  return layers.empty() ? std::vector<std::string>{} : layers.front().adapters->active_adapters();
}

std::shared_ptr<const PeftConfig> adapter_config(ConstModuleRef model_ref, const std::string& adapter_name) {
  const torch::nn::Module& model = model_ref.get();
  return detail::require_adapter(model, adapter_name);
}

void set_adapter(ModuleRef model_ref, const std::string& adapter_name, bool inference_mode) {
  torch::nn::Module& model = model_ref.get();
  set_adapter(model, std::vector<std::string>{adapter_name}, inference_mode);
}

void set_adapter(ModuleRef model_ref, std::initializer_list<std::string> adapter_names, bool inference_mode) {
  torch::nn::Module& model = model_ref.get();
  set_adapter(model, std::vector<std::string>(adapter_names), inference_mode);
}

void set_adapter(ModuleRef model_ref, const std::vector<std::string>& names, bool inference_mode) {
  torch::nn::Module& model = model_ref.get();
  require_known(model, names);
  const std::vector<AdaptedLayer> layers = detail::adapted_layers(model);
  for (const AdaptedLayer& layer : layers) {
    if (!detail::is_modules_to_save(*layer.adapters)) continue;
    const auto with_copy = std::count_if(names.begin(), names.end(), [&](const auto& n) { return layer.adapters->has_adapter(n); });
    if (with_copy > 1) {
      throw ConfigError("Only one adapter can be set at a time for modules_to_save, got " + std::to_string(with_copy) +
                        " with a copy of '" + layer.name + "'");
    }
  }
  if (any_merged(layers)) {
    TORCH_WARN("Adapter cannot be set when the model is merged. Unmerging the model first.");
    unmerge_all(layers);
  }
  for (const AdaptedLayer& layer : layers) layer.adapters->set_active_adapters(*layer.module, names, inference_mode);
}

void disable_adapters(ModuleRef model_ref) {
  torch::nn::Module& model = model_ref.get();
  const std::vector<AdaptedLayer> layers = detail::adapted_layers(model);
  // Python unmerges in the first disabled forward; here it happens now, so forward never changes weights.
  unmerge_all(layers);
  for (const AdaptedLayer& layer : layers) layer.adapters->set_disabled(*layer.module, true);
}

void enable_adapters(ModuleRef model_ref) {
  torch::nn::Module& model = model_ref.get();
  for (const AdaptedLayer& layer : detail::adapted_layers(model)) layer.adapters->set_disabled(*layer.module, false);
}

bool adapters_disabled(ConstModuleRef model_ref) {
  const torch::nn::Module& model = model_ref.get();
  const std::vector<AdaptedLayer> layers = detail::adapted_layers(model);
  return !layers.empty() && layers.front().adapters->disabled();
}

DisabledAdapters::DisabledAdapters(ModuleRef model) : model_(model.get()), was_disabled_(adapters_disabled(model)) {
  disable_adapters(model_);
}

DisabledAdapters::~DisabledAdapters() {
  if (was_disabled_) return;
  try {
    enable_adapters(model_);
  } catch (const std::exception& e) {
    TORCH_WARN("peft::DisabledAdapters could not enable the adapters again: ", e.what());
  }
}

void delete_adapter(ModuleRef model_ref, const std::string& adapter_name) {
  torch::nn::Module& model = model_ref.get();
  require_known(model, {adapter_name});
  const std::vector<AdaptedLayer> layers = detail::adapted_layers(model);
  for (const AdaptedLayer& layer : layers) {
    const auto merged = layer.adapters->merged_adapters();
    if (std::find(merged.begin(), merged.end(), adapter_name) != merged.end()) {
      throw Error("Cannot delete adapter(s) ['" + adapter_name + "'] while they are merged. Please unmerge them first.");
    }
  }
  const std::vector<std::string> active_before = active_adapters(model);
  for (const AdaptedLayer& layer : layers) {
    if (!layer.adapters->has_adapter(adapter_name)) continue;
    layer.adapters->remove_adapter(*layer.module, adapter_name);
    if (layer.adapters->adapter_names().empty()) {
      const std::vector<std::string> containers = layer.adapters->container_names();
      detail::detach_containers(*layer.module, containers);  // destroys the AdapterLayer: a plain layer again
    }
  }
  if (std::find(active_before.begin(), active_before.end(), adapter_name) == active_before.end()) return;
  std::vector<std::string> remaining;
  for (const auto& name : active_before) {
    if (name != adapter_name) remaining.push_back(name);
  }
  if (remaining.empty()) {
    std::vector<std::string> left = adapter_names(model);
    if (left.empty()) return;
    std::sort(left.begin(), left.end());
    TORCH_WARN("Adapter ", adapter_name, " was active which is now deleted. Setting active adapter to ", left.front(), ".");
    remaining = {left.front()};
  }
  set_adapter(model, remaining);
}

void merge_adapter(ModuleRef model_ref, std::initializer_list<std::string> adapter_names, bool safe_merge) {
  torch::nn::Module& model = model_ref.get();
  merge_adapter(model, std::vector<std::string>(adapter_names), safe_merge);
}

void merge_adapter(ModuleRef model_ref, const std::vector<std::string>& requested, bool safe_merge) {
  torch::nn::Module& model = model_ref.get();
  const std::vector<std::string> names = requested.empty() ? active_adapters(model) : requested;
  require_known(model, names);
  for (const auto& config : detail::collect_adapters(model).configs()) {  // Python's _check_merge_allowed
    const detail::Method* method = detail::find_method(config->peft_type());
    if (const std::string why = method ? method->merge_refusal(*config) : ""; !why.empty()) throw MergeError(why);
  }
  const std::vector<AdaptedLayer> layers = detail::adapted_layers(model);
  std::set<std::string> already;
  for (const AdaptedLayer& layer : layers) {
    for (const auto& name : layer.adapters->merged_adapters()) already.insert(name);
  }
  if (!already.empty()) {
    std::vector<std::string> more;
    for (const auto& name : names) {
      if (!already.count(name)) more.push_back(name);
    }
    if (more.empty()) {
      TORCH_WARN("All adapters are already merged, nothing to do.");
      return;
    }
    TORCH_WARN("Already following adapters were merged ", joined({already.begin(), already.end()}, ","),
               ". You are now additionally merging ", joined(more, ","), ".");
  }
  std::vector<std::unique_ptr<detail::PendingChange>> pending;
  for (const AdaptedLayer& layer : layers) {
    if (auto change = layer.adapters->prepare_merge(*layer.module, names, safe_merge)) pending.push_back(std::move(change));
  }
  for (auto& change : pending) change->commit();
}

void unmerge_adapter(ModuleRef model_ref) {
  torch::nn::Module& model = model_ref.get();
  const std::vector<AdaptedLayer> layers = detail::adapted_layers(model);
  if (!any_merged(layers)) {
    TORCH_WARN("Already unmerged. Nothing to do.");
    return;
  }
  unmerge_all(layers);
}

void merge_and_unload(ModuleRef model_ref, bool safe_merge, const std::vector<std::string>& adapter_names) {
  torch::nn::Module& model = model_ref.get();
  if (!detail::adapted_layers(model).empty()) merge_adapter(model, adapter_names, safe_merge);
  unload_all(model);
}

void unload(ModuleRef model) { unload_all(*model); }

AdapterNamesPerSample::AdapterNamesPerSample(ModuleRef model_ref, std::vector<std::string> adapter_names)
    : routing_(std::make_unique<Routing>()), previous_(detail::current_sample_routing()) {
  const torch::nn::Module& model = model_ref.get();
  if (model.is_training()) throw ConfigError("Cannot pass `adapter_names` when the model is in training mode.");
  const detail::ModelAdapters adapters = detail::collect_adapters(model);
  std::set<std::string> unknown;
  for (const auto& name : adapter_names) {
    if (name != "__base__" && !adapters.has(name)) unknown.insert(name);
  }
  if (!unknown.empty()) {
    throw ConfigError("Trying to infer with non-existing adapter(s): " + joined({unknown.begin(), unknown.end()}, ", "));
  }
  for (size_t row = 0; row < adapter_names.size(); ++row) {
    const std::string& name = adapter_names[row];
    auto group = std::find_if(routing_->groups.begin(), routing_->groups.end(), [&](const auto& g) { return g.first == name; });
    if (group != routing_->groups.end()) continue;
    std::vector<int64_t> rows;
    for (size_t j = row; j < adapter_names.size(); ++j) {
      if (adapter_names[j] == name) rows.push_back(static_cast<int64_t>(j));
    }
    routing_->groups.emplace_back(name, at::tensor(rows, at::kLong));
  }
  routing_->names = std::move(adapter_names);
  for (const AdaptedLayer& layer : detail::adapted_layers(model)) routing_->layers.insert(layer.adapters);
  detail::set_current_sample_routing(routing_.get());
}

AdapterNamesPerSample::~AdapterNamesPerSample() { detail::set_current_sample_routing(previous_); }

void set_requires_grad(ModuleRef model_ref, const std::vector<std::string>& names, bool requires_grad) {
  torch::nn::Module& model = model_ref.get();
  require_known(model, names);
  for (const AdaptedLayer& layer : detail::adapted_layers(model)) {
    for (const std::string& name : names) {
      for (const detail::AdapterTensor& t : layer.adapters->adapter_tensors(*layer.module, name)) {
        const bool trains = requires_grad && !t.frozen;
        if (!t.is_buffer && t.get().requires_grad() != trains) t.get().set_requires_grad(trains);
      }
    }
  }
}

void cast_adapter_dtype(ModuleRef model_ref, const std::string& adapter_name, c10::ScalarType dtype) {
  torch::nn::Module& model = model_ref.get();
  require_known(model, {adapter_name});
  if (!c10::isFloatingType(dtype)) {
    throw ConfigError(std::string("cast_adapter_dtype: ") + c10::toString(dtype) + " is not a floating-point dtype");
  }
  at::NoGradGuard no_grad;
  detail::SharedReplacements replacements;  // a tensor shared by several layers stays one tensor
  for (const AdaptedLayer& layer : detail::adapted_layers(model)) {
    for (const detail::AdapterTensor& t : layer.adapters->adapter_tensors(*layer.module, adapter_name)) {
      replacements.replace(*t.owner, t.name, t.is_buffer, [&](const at::Tensor& tensor) {
        return tensor.is_floating_point() ? tensor.to(dtype) : tensor;
      });
    }
  }
}

ParameterCount trainable_parameters(ConstModuleRef model_ref) {
  const torch::nn::Module& model = model_ref.get();
  ParameterCount count;
  // A tensor registered in several places (tied weights, adapter tensors shared by layers) counts once, as in
  // Python, whose named_parameters() drops duplicates.
  std::unordered_set<const c10::TensorImpl*> seen;
  for (const auto& p : model.parameters()) {
    if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
    count.total += p.numel();
    if (p.requires_grad()) count.trainable += p.numel();
  }
  return count;
}

void print_trainable_parameters(ConstModuleRef model_ref, std::ostream& out) {
  const torch::nn::Module& model = model_ref.get();
  const ParameterCount count = trainable_parameters(model);
  auto with_commas = [](int64_t n) {
    std::string digits = std::to_string(n), text;
    for (size_t i = 0; i < digits.size(); ++i) {
      if (i && (digits.size() - i) % 3 == 0) text += ',';
      text += digits[i];
    }
    return text;
  };
  const double percent = count.total ? 100.0 * static_cast<double>(count.trainable) / static_cast<double>(count.total) : 0.0;
  std::ostringstream line;
  line << "trainable params: " << with_commas(count.trainable) << " || all params: " << with_commas(count.total)
       << " || trainable%: " << std::fixed << std::setprecision(4) << percent;
  out << line.str() << "\n";
}

void print_trainable_parameters(ConstModuleRef model) { print_trainable_parameters(model, std::cout); }

}  // namespace peft

namespace peft::detail {
namespace {
thread_local const AdapterNamesPerSample::Routing* tls_routing = nullptr;
}  // namespace

const AdapterNamesPerSample::Routing* current_sample_routing() { return tls_routing; }
void set_current_sample_routing(const AdapterNamesPerSample::Routing* routing) { tls_routing = routing; }

void check_sample_routing(const at::Tensor& x, const AdapterNamesPerSample::Routing& routing, bool merged) {
  if (x.dim() == 0 || x.size(0) != static_cast<int64_t>(routing.names.size())) {
    throw ConfigError("Length of `adapter_names` should be the same as the number of inputs, but got " +
                      std::to_string(routing.names.size()) + " and " + std::to_string(x.dim() ? x.size(0) : 0) +
                      " respectively.");
  }
  if (merged) {
    throw ConfigError("Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first.");
  }
}

}  // namespace peft::detail
