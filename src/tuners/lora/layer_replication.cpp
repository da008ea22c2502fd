// LoRA's layer_replication (Python PEFT's replicate_layers and clone_module(share_weights=True)).
//
// The user's model holds a handle to the very ModuleListImpl its forward iterates, so the list is rebuilt in place
// (its modules_ vector and its children "0".."n-1"), never replaced. The first use of a layer keeps the user's block
// (the handles the user holds to it stay valid); every further use is a LibTorch clone() of it whose parameters are
// then made to share the original's storage.
//
// Sharing: Python registers the original Parameter objects on the deep copy. LibTorch cannot put the original
// tensor behind the copy's own member handles (LinearImpl::weight is a member of the copy that clone() filled), so
// each copied parameter gets the original's storage with set_data(): the copy's registry entry and member handle
// are one tensor whose storage is the original's. In-place changes (an in-place update, a load with copy_, LoRA's
// in-place merge) are seen by every use; freezing is per tensor (the injection freezes every base parameter, the
// copies included). What replaces a tensor instead of writing into it (set_data, Module::to() to another device or
// dtype) gives that tensor its own storage again: values stay equal while the base is frozen, but move the model
// before replicating to keep the memory shared. Buffers are copied, as Python's deepcopy does.

#include "tuners/lora/layer_replication.h"

#include <string>

#include <c10/util/Exception.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <peft/error.h>

#include "core/adapter_layer.h"
#include "core/module_access.h"
#include "core/module_walk.h"

namespace peft::detail::lora {
namespace {


torch::nn::Module* child(torch::nn::Module& module, const std::string& name) {
  const auto* found = children_of(module).find(name);
  return found ? found->get() : nullptr;
}

struct LayerList {
  torch::nn::ModuleListImpl* list;
  std::string name;  // dotted, for messages
};

// Python's lookup: `while hasattr(model, "model")`, then "bert", then the first of layers / encoder.layer / h.
LayerList find_layer_list(torch::nn::Module& model) {
  torch::nn::Module* at = &model;
  std::string prefix;
  while (torch::nn::Module* inner = child(*at, "model")) {
    at = inner;
    prefix += "model.";
  }
  if (torch::nn::Module* bert = child(*at, "bert")) {
    at = bert;
    prefix += "bert.";
  }
  torch::nn::Module* found = nullptr;
  std::string name;
  torch::nn::Module* encoder = child(*at, "encoder");
  if ((found = child(*at, "layers"))) {
    name = prefix + "layers";
  } else if (encoder && (found = child(*encoder, "layer"))) {
    name = prefix + "encoder.layer";
  } else if ((found = child(*at, "h"))) {
    name = prefix + "h";
  }
  auto* list = dynamic_cast<torch::nn::ModuleListImpl*>(found);
  if (!list) {
    throw ConfigError(
        "Could not locate the layers attribute in the model. Expected Llama, Bert or Falcon compatible "
        "architectures. (layer_replication: " +
        (found ? "'" + name + "' is a " + found->name() + ", not a torch::nn::ModuleList"
               : "no child " + prefix + "layers, " + prefix + "encoder.layer or " + prefix + "h") +
        ")");
  }
  return {list, name};
}

// Python's clone_module(block, share_weights=True).
std::shared_ptr<torch::nn::Module> copy_sharing_parameters(const torch::nn::Module& block, const std::string& name) {
  walk_modules(block, [&](const std::string& inner, const torch::nn::Module& module) {
    if (adapter_layer_of(module)) {
      throw ConfigError("layer_replication: '" + name + (inner.empty() ? "" : "." + inner) +
                        "' already carries adapters, and peft-cpp does not copy adapter layers. Replicate the layers "
                        "with the model's first adapter only.");
    }
  });
  std::shared_ptr<torch::nn::Module> copy;
  try {
    copy = block.clone();
  } catch (const c10::Error& e) {
    throw ConfigError("layer_replication: cannot copy '" + name + "' (" + block.name() +
                      "): LibTorch copies a module only when its class, and every submodule's, derives from "
                      "torch::nn::Cloneable<Impl> with a reset() that registers its parameters, buffers and "
                      "submodules. Derive the block from torch::nn::Cloneable<Impl>. (" + e.what_without_backtrace() + ")");
  }
  const auto originals = block.named_parameters(/*recurse=*/true);
  auto copies = copy->named_parameters(/*recurse=*/true);
  if (copies.size() != originals.size()) {
    throw ConfigError("layer_replication: the copy of '" + name + "' (" + block.name() + ") has " +
                      std::to_string(copies.size()) + " parameters, the block " + std::to_string(originals.size()) +
                      "; its reset() must register the same parameters as the block has.");
  }
  for (const auto& original : originals) {
    at::Tensor* shared = copies.find(original.key());
    if (!shared || shared->sizes() != original.value().sizes()) {
      throw ConfigError("layer_replication: the copy of '" + name + "' (" + block.name() + ") has no parameter '" +
                        original.key() + "' shaped like the block's; its reset() must register the same parameters.");
    }
    shared->set_data(original.value());
    shared->set_requires_grad(original.value().requires_grad());
  }
  return copy;
}

}  // namespace

std::unique_ptr<ModelPreparation> replicate_layers(torch::nn::Module& model,
                                                   const std::vector<std::pair<int64_t, int64_t>>& layer_map) {
  const LayerList found = find_layer_list(model);
  torch::nn::ModuleListImpl& list = *found.list;
  const ModuleVector& layers = modules_of(list);
  const auto size = static_cast<int64_t>(layers.size());

  // ---- every new entry first; nothing changes yet
  ModuleVector rebuilt;
  std::vector<bool> used(layers.size(), false);
  for (const auto& [start, end] : layer_map) {
    for (int64_t i = start; i < end; ++i) {
      // Python's ModuleList indexing: negative indices count from the end.
      if (i < -size || i >= size) {
        throw ConfigError("layer_replication: index " + std::to_string(i) + " is out of range ('" + found.name +
                          "' has " + std::to_string(size) + " layers; the range [" + std::to_string(start) + ", " +
                          std::to_string(end) + ") reaches past it).");
      }
      const auto index = static_cast<size_t>(i < 0 ? i + size : i);
      if (!used[index]) {
        used[index] = true;
        rebuilt.push_back(layers[index]);
      } else {
        rebuilt.push_back(copy_sharing_parameters(*layers[index], found.name + "." + std::to_string(index)));
      }
    }
  }
  ChildMap children = children_of(list);  // keeps the registry's key description
  children.clear();
  for (size_t i = 0; i < rebuilt.size(); ++i) children.insert(std::to_string(i), rebuilt[i]);

  // ---- the swap, which cannot fail; the old entries are kept for the undo
  torch::nn::ModuleListImpl* target = &list;
  auto old_layers = std::make_shared<ModuleVector>(std::move(rebuilt));
  auto old_children = std::make_shared<ChildMap>(std::move(children));
  auto swap = [target, old_layers, old_children] {
    std::swap(modules_of(*target), *old_layers);
    std::swap(static_cast<torch::nn::Module&>(*target).*kChildrenMember, *old_children);
  };
  swap();
  return std::make_unique<ModelPreparation>(swap);
}

}  // namespace peft::detail::lora
