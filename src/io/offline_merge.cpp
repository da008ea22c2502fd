#include <peft/offline_merge.h>

#include <cmath>
#include <map>
#include <set>

#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/matmul.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>

#include <peft/error.h>
#include <peft/inject.h>
#include <peft/layers.h>
#include <peft/lifecycle.h>
#include <peft/tuners/lora/config.h>

#include "core/checkpoint_keys.h"
#include "core/json_config.h"
#include "core/module_access.h"
#include "core/tensor_slots.h"
#include "core/matching.h"
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

// LoRA on a MultiheadAttention (Python's lora.MultiheadAttention), merged as Python's merge_and_unload does:
// in_proj_weight += s B A for the attention's own adapter, out_proj.weight += 2 s B A for its out_proj's (Python 0.20
// adds that delta twice; see tuners/lora/layer.h). The attention has no stand-in layer: the deltas are computed here.
void merge_attention_lora(const PeftConfig& config, const std::string& module, const StateDict& tensors,
                          const StateDict& base, bool is_out_proj, double scale, OfflineMergeResult& result) {
  const auto* lora = dynamic_cast<const LoraConfig*>(&config);
  if (!lora) {
    throw MergeError("'" + module + "' belongs to a MultiheadAttention, which only LoRA adapts; this adapter is " +
                     config.peft_type() + ".");
  }
  if (lora->use_dora()) throw MergeError("'" + module + "': DoRA on a MultiheadAttention is not supported (nor in Python).");
  static const std::string out_proj = ".base_layer.out_proj";
  const std::string attention = is_out_proj ? module.substr(0, module.size() - out_proj.size()) : module;
  const std::string weight_key = is_out_proj ? attention + ".out_proj.weight" : attention + ".in_proj_weight";
  const at::Tensor* weight = base.find(weight_key);
  if (!weight) {
    result.modules_not_in_base.push_back(module);
    return;
  }
  const at::Tensor* A = tensors.find(module + ".lora_A.weight");
  const at::Tensor* B = tensors.find(module + ".lora_B.weight");
  if (!A || !B || tensors.size() != 2) {
    throw StateDictError("The adapter's tensors for the MultiheadAttention part '" + module + "' are not one LoRA pair "
                         "(lora_A.weight, lora_B.weight).");
  }
  // The out_proj takes its attention's rank and alpha, as in Python.
  const int64_t r = detail::PatternLookup<int64_t>(lora->rank_pattern(), "rank_pattern").lookup(attention, lora->r());
  const double alpha = detail::PatternLookup<double>(lora->alpha_pattern(), "alpha_pattern").lookup(attention, lora->lora_alpha());
  if (A->dim() != 2 || B->dim() != 2 || A->size(0) != r || B->size(1) != r || A->size(1) != weight->size(1) ||
      B->size(0) != weight->size(0)) {
    throw StateDictError("The adapter's '" + module + "' LoRA pair has shapes " + c10::str(A->sizes()) + " and " +
                         c10::str(B->sizes()) + ", which do not fit rank " + std::to_string(r) + " and '" + weight_key +
                         "' of shape " + c10::str(weight->sizes()) + ".");
  }
  const double scaling = lora->use_rslora() ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
  const at::Tensor delta = at::matmul(*B, *A) * (scaling * (is_out_proj ? 2.0 : 1.0) * scale);
  result.tensors.insert(weight_key, (weight->to(at::kFloat) + delta).to(weight->scalar_type()));
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
  if (const std::string why = method.merge_refusal(config); !why.empty()) throw MergeError(why);  // layer_replication
  if (config.peft_type() != "TRAINABLE_TOKENS" && method.uses_trainable_tokens(config)) {
    throw MergeError("This " + config.peft_type() + " adapter trains tokens too (trainable_token_indices), whose rows "
                     "an offline merge does not write yet: merge it on the model (load_adapter, then merge_and_unload).");
  }
  if (const detail::ConfigField* tying = method.field("ensure_weight_tying"); tying && tying->value(config) == true) {
    throw MergeError("This adapter ties layers to the input embedding (ensure_weight_tying), which share one weight in "
                     "the model but not in a weights file: merge it on the model (load_adapter, then merge_and_unload).");
  }
  if (method.targets_parameters(config)) {
    throw MergeError("This adapter adapts parameters (target_parameters), whose checkpoint keys name their wrappers' "
                     "nesting, not the parameters: merge it on the model (load_adapter, then merge_and_unload).");
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
    const bool is_out_proj = module.size() > out_proj.size() &&
                             module.compare(module.size() - out_proj.size(), out_proj.size(), out_proj) == 0;
    if (!weight && (base.find(module + ".in_proj_weight") || is_out_proj)) {
      merge_attention_lora(config, module, tensors, base, is_out_proj, scale, result);
      continue;
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
