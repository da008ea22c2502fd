// Hot-swapping LoRA weights in place (Python PEFT's utils/hotswap.py): pad ranks to a common size once,
// then replace an adapter's tensors and scalings without re-injecting, so shapes (and anything holding
// the tensors) stay valid.

#include <cmath>
#include <filesystem>
#include <unordered_map>

#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <torch/nn/modules/conv.h>

#include <peft/error.h>
#include <peft/lifecycle.h>
#include <peft/safetensors.h>
#include <peft/tuners/lora/config.h>
#include <peft/tuners/lora/hotswap.h>

#include "core/checkpoint_keys.h"
#include "core/matching.h"
#include "core/model_adapters.h"
#include "core/tensor_slots.h"
#include "tuners/lora/layer.h"

namespace peft {
namespace {

using detail::AdaptedLayer;
using detail::lora::LoraLayer;

struct LoraLayerRef {
  std::string name;
  torch::nn::Module* module;
  LoraLayer* layer;
};

std::vector<LoraLayerRef> lora_layers(const torch::nn::Module& model) {
  std::vector<LoraLayerRef> out;
  for (const AdaptedLayer& l : detail::adapted_layers(model)) {
    if (auto* lora = dynamic_cast<LoraLayer*>(l.adapters)) out.push_back({l.name, l.module, lora});
  }
  return out;
}

int64_t conv_groups(const torch::nn::Module& module) {
  if (auto* c = dynamic_cast<const torch::nn::Conv1dImpl*>(&module)) return c->options.groups();
  if (auto* c = dynamic_cast<const torch::nn::Conv2dImpl*>(&module)) return c->options.groups();
  if (auto* c = dynamic_cast<const torch::nn::Conv3dImpl*>(&module)) return c->options.groups();
  return 1;
}

// The rank sits in dim 0 of A (lora_A.weight, lora_embedding_A) and dim 1 of B.
int64_t rank_dim(const std::string& key) {
  return key.find("lora_A") != std::string::npos || key.find("lora_embedding_A") != std::string::npos ? 0 : 1;
}

// Keeps the LibTorch layer's options in line with a weight whose rank dimension changed.
void resize_options(torch::nn::Module& owner, int64_t dim, int64_t size) {
  if (auto* linear = dynamic_cast<torch::nn::LinearImpl*>(&owner)) {
    (dim == 0 ? linear->options.out_features() : linear->options.in_features()) = size;
  } else if (auto* c = dynamic_cast<torch::nn::Conv1dImpl*>(&owner)) {
    (dim == 0 ? c->options.out_channels() : c->options.in_channels()) = size;
  } else if (auto* c = dynamic_cast<torch::nn::Conv2dImpl*>(&owner)) {
    (dim == 0 ? c->options.out_channels() : c->options.in_channels()) = size;
  } else if (auto* c = dynamic_cast<torch::nn::Conv3dImpl*>(&owner)) {
    (dim == 0 ? c->options.out_channels() : c->options.in_channels()) = size;
  }
}

// `source` placed in the leading slice of a zero tensor shaped like `target`.
at::Tensor padded_like(const at::Tensor& target, const at::Tensor& source) {
  at::Tensor out = at::zeros(target.sizes(), target.options());
  at::Tensor slice = out;
  for (int64_t d = 0; d < source.dim(); ++d) slice = slice.narrow(d, 0, source.size(d));
  slice.copy_(source);
  return out;
}

// Python formats values in "Configs are incompatible" with repr(); these are the checked fields' forms.
std::string python_repr(const nlohmann::json& v) {
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_number_float()) {
    std::ostringstream os;
    os << v.get<double>();
    std::string s = os.str();
    if (s.find_first_of(".e") == std::string::npos) s += ".0";
    return s;
  }
  if (v.is_object()) {
    std::string out = "{";
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      out += (first ? "'" : ", '") + it.key() + "': " + python_repr(it.value());
      first = false;
    }
    return out + "}";
  }
  return v.dump();
}

void check_hotswap_configs_compatible(const PeftConfig& current, const PeftConfig& incoming) {
  if (current.peft_type() != incoming.peft_type()) {
    throw ConfigError("Incompatible PEFT types found: " + current.peft_type() + " and " + incoming.peft_type());
  }
  if (current.peft_type() != "LORA") {
    throw ConfigError("Hotswapping only supports LORA but " + current.peft_type() + " was passed.");
  }
  const auto a = nlohmann::json::parse(current.to_json_string());
  const auto b = nlohmann::json::parse(incoming.to_json_string());
  // Python's CONFIG_KEYS_TO_CHECK, plus use_bdlora: which factor is block-diagonal (and in how many blocks) is part
  // of the layer's math here, not of the swapped tensors.
  for (const char* key : {"use_rslora", "lora_dropout", "alpha_pattern", "use_dora", "use_bdlora"}) {
    if (a[key] != b[key]) {
      throw ConfigError(std::string("Configs are incompatible: for ") + key + ", " + python_repr(a[key]) + " != " +
                        python_repr(b[key]));
    }
  }
}

}  // namespace

void prepare_for_hotswap(ModuleRef model, int64_t target_rank) {
  const std::vector<LoraLayerRef> layers = lora_layers(*model);
  if (layers.empty()) throw Error("prepare_for_hotswap: the model has no LoRA adapters to pad.");
  // Check everything first.
  for (const auto& ref : layers) {
    const int64_t groups = conv_groups(*ref.module);
    if (target_rank % groups != 0) {
      throw ConfigError("Trying to pad a conv LoRA adapter with groups=" + std::to_string(groups) + " to target rank " +
                        std::to_string(target_rank) + ", but the target rank is not divisible by " +
                        std::to_string(groups) + ". Please choose a target rank that is divisible by " +
                        std::to_string(groups) + ".");
    }
    for (const std::string& name : ref.layer->adapter_names()) {
      if (ref.layer->adapter(name)->block_diagonal()) {
        throw ConfigError("prepare_for_hotswap: the BD-LoRA adapter '" + name + "' of '" + ref.name +
                          "' cannot be padded: the blocks of its block-diagonal factor depend on the rank");
      }
      const auto [A, B] = ref.layer->lora_weights(*ref.layer->adapter(name));
      if (A.size(0) > target_rank) {
        throw ConfigError("Trying to pad the adapter to the target rank " + std::to_string(target_rank) +
                          ", but the original rank is larger (" + std::to_string(A.size(0)) + "). This is not possible.");
      }
      if (groups > 1 && A.size(0) != target_rank) {
        throw ConfigError("prepare_for_hotswap: padding the LoRA adapter of the grouped convolution '" + ref.name +
                          "' is not supported");
      }
    }
  }
  at::NoGradGuard no_grad;
  for (const auto& ref : layers) {
    for (const std::string& name : ref.layer->adapter_names()) {
      for (const detail::AdapterTensor& t : ref.layer->adapter_tensors(*ref.module, name)) {
        if (t.key.find("magnitude") != std::string::npos || t.key.find("bias") != std::string::npos) continue;
        const at::Tensor& current = t.get();
        const int64_t dim = rank_dim(t.key);
        if (current.size(dim) == target_rank) continue;
        std::vector<int64_t> shape = current.sizes().vec();
        shape[dim] = target_rank;
        detail::replace_tensor(*t.owner, t.name, padded_like(at::zeros(shape, current.options()), current));
        resize_options(*t.owner, dim, target_rank);
      }
    }
  }
}

void hotswap_adapter(ModuleRef model, const StateDict& state_dict, const std::string& adapter_name,
                     const PeftConfig* config) {
  const std::shared_ptr<const PeftConfig> current = adapter_config(model, adapter_name);
  const PeftConfig& incoming = config ? *config : *current;
  check_hotswap_configs_compatible(*current, incoming);
  const auto& lora = dynamic_cast<const LoraConfig&>(incoming);
  for (const LoraConfig* c : {&lora, dynamic_cast<const LoraConfig*>(current.get())}) {
    if (c && c->target_parameters() && !c->target_parameters()->empty()) {
      throw ConfigError("hotswap_adapter does not swap adapters with `target_parameters` (their deltas live in the "
                        "parameters): load the new adapter with load_adapter and switch with set_adapter.");
    }
  }

  struct Slot {
    const LoraLayerRef* layer;
    detail::AdapterTensor tensor;
  };
  const std::vector<LoraLayerRef> layers = lora_layers(*model);
  std::unordered_map<std::string, Slot> slots;
  for (const auto& ref : layers) {
    if (!ref.layer->has_adapter(adapter_name)) continue;
    for (auto& t : ref.layer->adapter_tensors(*ref.module, adapter_name)) slots.emplace(ref.name + "." + t.key, Slot{&ref, t});
  }

  // Dry run: every key must name a tensor of the adapter, with a shape it can take.
  struct Planned {
    const Slot* slot;
    const at::Tensor* value;
  };
  std::vector<Planned> plan;
  std::vector<std::string> unexpected;
  std::unordered_map<std::string, bool> provided;
  for (const auto& item : state_dict) {
    const std::string key = detail::strip_save_prefix(item.key());
    auto it = slots.find(key);
    if (it == slots.end()) {
      unexpected.push_back(item.key());
      continue;
    }
    const at::Tensor& old_value = it->second.tensor.get();
    const at::Tensor& new_value = item.value();
    bool fits = old_value.dim() == new_value.dim();
    for (int64_t d = 0; fits && d < old_value.dim(); ++d) {
      const bool rank_axis = d == rank_dim(it->second.tensor.key) && it->second.tensor.key.find("magnitude") == std::string::npos;
      fits = rank_axis || old_value.size(d) == new_value.size(d);
    }
    if (!fits) {
      std::ostringstream msg;
      msg << "Incompatible shapes found for LoRA weights " << item.key() << ": " << old_value.sizes() << " vs "
          << new_value.sizes() << ". Please ensure that all ranks are padded to the largest rank among all LoRA "
          << "adapters by using peft::prepare_for_hotswap.";
      throw StateDictError(msg.str());
    }
    provided[key] = true;
    plan.push_back({&it->second, &new_value});
  }
  if (!unexpected.empty()) {
    std::string keys;
    for (size_t i = 0; i < unexpected.size(); ++i) keys += (i ? ", " : "") + unexpected[i];
    throw StateDictError("Hot swapping the adapter did not succeed, unexpected keys found: " + keys + ".");
  }

  const detail::PatternLookup<int64_t> ranks(lora.rank_pattern(), "rank_pattern");
  const detail::PatternLookup<double> alphas(lora.alpha_pattern(), "alpha_pattern");
  at::NoGradGuard no_grad;
  // Tensors the new adapter does not have are zeroed, so those layers contribute nothing.
  for (const auto& [key, slot] : slots) {
    if (!provided.count(key)) slot.tensor.get().zero_();
  }
  for (const Planned& p : plan) {
    const detail::AdapterTensor& t = p.slot->tensor;
    const at::Tensor& old_value = t.get();
    const at::Tensor value = p.value->to(old_value.device(), old_value.scalar_type());
    if (old_value.sizes() == value.sizes()) {
      old_value.copy_(value);
    } else if (value.size(rank_dim(t.key)) < old_value.size(rank_dim(t.key))) {
      old_value.copy_(padded_like(old_value, value));  // the slot was padded by prepare_for_hotswap
    } else {
      detail::replace_tensor(*t.owner, t.name, value.clone(), t.is_buffer);  // a larger rank: a new tensor
      resize_options(*t.owner, rank_dim(t.key), value.size(rank_dim(t.key)));
    }
    const std::string& module = p.slot->layer->name;
    const int64_t r = ranks.lookup(module, lora.r());
    const double alpha = alphas.lookup(module, lora.lora_alpha());
    const double scaling = lora.use_rslora() ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
    p.slot->layer->layer->set_scaling(adapter_name, scaling);
  }
}

void hotswap_adapter(ModuleRef model, const std::string& adapter_directory, const std::string& adapter_name) {
  const std::filesystem::path dir(adapter_directory);
  const std::shared_ptr<PeftConfig> config = load_config((dir / "adapter_config.json").string());
  const StateDict state_dict = safetensors::load_file((dir / "adapter_model.safetensors").string());
  hotswap_adapter(model, state_dict, adapter_name, config.get());
}

}  // namespace peft
