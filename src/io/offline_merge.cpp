#include <peft/offline_merge.h>

#include <map>
#include <set>

#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>

#include <peft/error.h>
#include <peft/inject.h>
#include <peft/layers.h>
#include <peft/lifecycle.h>

#include "core/checkpoint_keys.h"
#include "core/json_config.h"
#include "core/module_access.h"
#include "core/tensor_slots.h"
#include "core/method.h"

namespace peft {
namespace {

// transformers' Conv1D stand-in: weight stored (in, out).
struct TransposedLinearImpl : torch::nn::Module, LinearLike {
  at::Tensor weight, bias;
  TransposedLinearImpl(at::Tensor w, at::Tensor b) {
    weight = register_parameter("weight", std::move(w), false);
    if (b.defined()) bias = register_parameter("bias", std::move(b), false);
  }
  at::Tensor linear_weight() const override { return parameters_of_self("weight"); }
  at::Tensor linear_bias() const override { return bias.defined() ? parameters_of_self("bias") : at::Tensor(); }
  bool weight_is_transposed() const override { return true; }

 private:
  at::Tensor parameters_of_self(const char* name) const { return *detail::parameters_of(*this).find(name); }
};

template <class Impl, class Options>
std::shared_ptr<Impl> conv_shell(const at::Tensor& weight, bool bias) {
  // A one-channel shell (LibTorch's init rejects zero channels), then the real geometry and tensors.
  std::vector<int64_t> kernel(weight.sizes().begin() + 2, weight.sizes().end());
  auto layer = std::make_shared<Impl>(Options(1, 1, kernel).bias(bias));
  layer->options.in_channels(weight.size(1));
  layer->options.out_channels(weight.size(0));
  return layer;
}

// A layer of the right kind holding `weight` / `bias` as float32 (the tensors themselves with `in_place`).
// Drop-in layers: they need no call routing (nothing is run through them anyway), so the merge works in
// every build.
std::shared_ptr<torch::nn::Module> stand_in(const std::string& module, const at::Tensor& weight, const at::Tensor& bias,
                                            bool embedding, bool fan_in_fan_out, bool in_place) {
  // Copies unless in_place: merging may write into the stand-in's tensors.
  auto own = [&](const at::Tensor& t) { return t.scalar_type() != at::kFloat ? t.to(at::kFloat) : in_place ? t : t.clone(); };
  const at::Tensor w = own(weight);
  const at::Tensor b = bias.defined() ? own(bias) : at::Tensor();
  std::shared_ptr<torch::nn::Module> layer;
  switch (w.dim()) {
    case 1: {
      auto norm = std::make_shared<LayerNormImpl>(
          torch::nn::LayerNormOptions({w.size(0)}).elementwise_affine(true));
      layer = norm;
      break;
    }
    case 2:
      if (embedding) {
        auto emb = std::make_shared<EmbeddingImpl>(torch::nn::EmbeddingOptions(0, w.size(1)));
        emb->options.num_embeddings(w.size(0));
        layer = emb;
      } else if (fan_in_fan_out) {
        return std::make_shared<TransposedLinearImpl>(w, b);
      } else {
        auto linear = std::make_shared<LinearImpl>(torch::nn::LinearOptions(1, 0).bias(b.defined()));  // allocates nothing
        linear->options = torch::nn::LinearOptions(w.size(1), w.size(0)).bias(b.defined());
        layer = linear;
      }
      break;
    case 3: layer = conv_shell<Conv1dImpl, torch::nn::Conv1dOptions>(w, b.defined()); break;
    case 4: layer = conv_shell<Conv2dImpl, torch::nn::Conv2dOptions>(w, b.defined()); break;
    case 5: layer = conv_shell<Conv3dImpl, torch::nn::Conv3dOptions>(w, b.defined()); break;
    default:
      throw StateDictError("Cannot merge into '" + module + ".weight': a " + std::to_string(w.dim()) +
                           "-d weight is no layer type peft-cpp knows.");
  }
  detail::replace_tensor(*layer, "weight", w);
  if (detail::parameters_of(*layer).contains("bias")) {
    if (b.defined()) {
      detail::replace_tensor(*layer, "bias", b);
    } else {
      detail::parameters_of(*layer).erase("bias");
    }
  }
  return layer;
}

// Registers `layer` at dotted `path` under `root`, creating plain intermediate modules.
void place(torch::nn::Module& root, const std::string& path, std::shared_ptr<torch::nn::Module> layer) {
  torch::nn::Module* parent = &root;
  size_t start = 0;
  for (size_t dot = path.find('.'); dot != std::string::npos; dot = path.find('.', start)) {
    const std::string part = path.substr(start, dot - start);
    const auto* child = detail::children_of(*parent).find(part);
    parent = child ? child->get() : parent->register_module(part, std::make_shared<torch::nn::Module>()).get();
    start = dot + 1;
  }
  parent->register_module(path.substr(start), std::move(layer));
}

}  // namespace

OfflineMergeResult merge_into_weights(const PeftConfig& config, const StateDict& adapter, const StateDict& base,
                                      const OfflineMergeOptions& options) {
  const double scale = options.scale;
  const detail::Method& method = detail::require_method(config.peft_type());
  if (const std::string refusal = method.injection_refusal(); !refusal.empty()) {
    throw MergeError(config.peft_type() + " adapters cannot be merged into weights (Python PEFT cannot either). " +
                     refusal);
  }
  OfflineMergeResult result;

  // The adapter's tensors per module, and the container names each module's keys use.
  std::map<std::string, StateDict> per_module;
  std::map<std::string, std::set<std::string>> containers;
  StateDict shared;  // model-level tensors the layers share (VeRA's "base_model.vera_A"), loaded with them
  for (const auto& item : adapter) {
    if (method.shared_container_of_key(item.key())) {
      // Integer tensors (FRoD's sparse indices) keep their dtype.
      shared.insert(item.key(), item.value().is_floating_point() ? item.value().to(at::kFloat) : item.value());
      continue;
    }
    const std::string key = detail::strip_save_prefix(item.key());
    const std::string module = detail::module_of_key(key, method.prefix());
    if (module.empty()) continue;
    const std::string rest = key.substr(module.size() + 1);
    containers[module].insert(rest.substr(0, rest.find('.')));
    // Weights are merged in float32; integer tensors (SHiRA's shira_indices) keep their dtype.
    const at::Tensor& tensor = item.value();
    per_module[module].insert(key, tensor.is_floating_point() ? tensor.to(at::kFloat) : tensor);
  }

  if (per_module.empty() && !shared.is_empty()) {
    // Only model-level tensors (UniLoRA's theta_d without save_indices): the per-layer parts are regenerated from
    // the config on the model itself, which an offline merge does not have.
    throw StateDictError("The adapter holds only tensors its layers share ('" + shared.keys().front() +
                         "') and names no layer: merge it on the model (load_adapter, then merge_and_unload).");
  }

  auto root = std::make_shared<torch::nn::Module>();
  StateDict weights;
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> layers;
  const detail::ConfigField* fan_in_fan_out_field = method.field("fan_in_fan_out");
  const bool fan_in_fan_out = fan_in_fan_out_field && fan_in_fan_out_field->value(config) == true;
  // Which containers mean the base layer was an Embedding is the method's to say (lora_embedding_A, ...).
  auto is_embedding = [&](const std::set<std::string>& names) {
    for (const auto& name : method.embedding_containers()) {
      if (names.count(name)) return true;
    }
    return false;
  };
  for (const auto& [module, tensors] : per_module) {
    const at::Tensor* weight = base.find(module + ".weight");
    static const std::string out_proj = ".base_layer.out_proj";
    if (!weight && (base.find(module + ".in_proj_weight") ||
                    (module.size() > out_proj.size() &&
                     module.compare(module.size() - out_proj.size(), out_proj.size(), out_proj) == 0))) {
      throw MergeError("'" + module + "' belongs to a MultiheadAttention, whose adapters are not merged offline yet: "
                       "load the adapter on the model (load_adapter), merge_and_unload, and save the model's weights.");
    }
    if (!weight) {
      result.modules_not_in_base.push_back(module);
      continue;
    }
    const at::Tensor* bias = base.find(module + ".bias");
    auto layer = stand_in(module, *weight, bias ? *bias : at::Tensor(), is_embedding(containers[module]), fan_in_fan_out,
                          options.in_place);
    place(*root, module, layer);
    layers.emplace_back(module, layer);
    for (const auto& item : tensors) weights.insert(item.key(), item.value());
  }
  for (const auto& item : shared) weights.insert(item.key(), item.value());

  if (!layers.empty()) {
    // Only the layers named by the state dict's keys; modules_to_save are handled as plain replacements.
    nlohmann::json json = nlohmann::json::parse(config.to_json_string());
    json["target_modules"] = nullptr;
    json["modules_to_save"] = nullptr;
    json["inference_mode"] = true;
    const std::shared_ptr<PeftConfig> effective = config_from_json_string(json.dump());
    std::map<std::string, std::pair<at::Tensor, at::Tensor>> before;
    for (const auto& [module, layer] : layers) {
      const at::Tensor* b = detail::parameters_of(*layer).find("bias");
      // Copies: merging replaces the layer's tensors (sometimes in place).
      const at::Tensor& w = *detail::parameters_of(*layer).find("weight");
      before[module] = {scale != 1.0 ? w.clone() : at::Tensor(), b ? b->clone() : at::Tensor()};
    }
    inject_adapter_in_model(*effective, root, "default", /*low_cpu_mem_usage=*/true, weights);
    const LoadResult loaded = set_peft_model_state_dict(*root, weights, "default", /*low_cpu_mem_usage=*/true);
    if (!loaded.missing_keys.empty()) {
      throw StateDictError("The adapter lacks tensors its config needs, e.g. '" + loaded.missing_keys.front() + "'.");
    }
    merge_and_unload(*root);
    at::NoGradGuard no_grad;
    for (const auto& [module, layer] : layers) {
      const auto& [old_weight, old_bias] = before[module];
      at::Tensor w = *detail::parameters_of(*layer).find("weight");
      if (scale != 1.0) w = old_weight + scale * (w - old_weight);
      result.tensors.insert(module + ".weight", w.to(base.find(module + ".weight")->scalar_type()));
      if (const at::Tensor* b = detail::parameters_of(*layer).find("bias"); b && old_bias.defined()) {
        if (!at::equal(*b, old_bias)) {
          at::Tensor nb = scale != 1.0 ? old_bias + scale * (*b - old_bias) : *b;
          result.tensors.insert(module + ".bias", nb.to(base.find(module + ".bias")->scalar_type()));
        }
      }
    }
  }

  for (const auto& item : replaced_base_tensors(config, adapter)) {
    const at::Tensor* target = base.find(item.key());
    if (!target) continue;
    if (!target->sizes().equals(item.value().sizes())) {
      throw StateDictError("The adapter's '" + item.key() + "' has shape " + c10::str(item.value().sizes()) +
                           " but the base model's has " + c10::str(target->sizes()) + ".");
    }
    if (result.tensors.contains(item.key())) result.tensors.erase(item.key());
    result.tensors.insert(item.key(), item.value().to(target->scalar_type()));
  }
  return result;
}

}  // namespace peft
