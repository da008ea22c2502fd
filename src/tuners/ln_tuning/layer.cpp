// LN tuning (Python PEFT's tuners/ln_tuning): each adapter is a trainable copy of the whole targeted layer,
// used instead of it while active. Merging swaps the copy's tensors into the layer (and the layer's into
// the copy), so unmerging swaps them back.

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <peft/error.h>
#include <peft/tuners/ln_tuning/config.h>

#include "core/module_access.h"
#include "core/tensor_slots.h"
#include "tuners/common/layer_copy.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/ln_tuning/layer.h"

namespace peft::detail::ln_tuning {
namespace {

/// Exchanges the values of every parameter and buffer the two layers share by name.
void swap_tensors(torch::nn::Module& a, torch::nn::Module& b) {
  at::NoGradGuard no_grad;
  auto swap_in = [](auto& first, auto& second) {
    for (auto& item : first) {
      at::Tensor* other = second.find(item.key());
      if (!other || !item.value().defined() || !other->defined()) continue;
      const at::Tensor mine = item.value().detach(), theirs = other->detach();
      item.value().set_data(theirs);
      other->set_data(mine);
    }
  };
  swap_in(parameters_of(a), parameters_of(b));
  swap_in(buffers_of(a), buffers_of(b));
}

class LNTuningLayer final : public DictAdapterLayer {
 public:
  LNTuningLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, {{"ln_tuning_layers", true}}) {}

  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module& base, const std::vector<std::string>& names,
                                               bool) override {
    std::vector<std::string> todo;
    for (const auto& name : names) {
      if (has_adapter(name) && std::find(merged_.begin(), merged_.end(), name) == merged_.end()) todo.push_back(name);
    }
    if (todo.empty()) return nullptr;
    if (todo.size() > 1) {
      throw MergeError("Trying to merge " + std::to_string(todo.size()) +
                       " adapters, but LN tuning does not allow merging more than one adapter at a time");
    }
    if (base_layer().weight().defined() && base_layer().weight().device().is_meta()) {
      throw MergeError("Cannot merge into a layer whose weight is on the meta device.");
    }
    class Swap final : public PendingChange {
     public:
      LNTuningLayer* layer = nullptr;
      torch::nn::Module* base = nullptr;
      std::string name;
      void commit() override {
        std::lock_guard<std::mutex> lock(layer->mutex_);
        while (!layer->merged_.empty()) {
          TORCH_WARN("Already merged with ", layer->merged_.back(), ". Unmerging first.");
          swap_tensors(*base, *layer->module(0, layer->merged_.back()));
          layer->merged_.pop_back();
        }
        swap_tensors(*base, *layer->module(0, name));
        layer->merged_.push_back(name);
        layer->publish();
      }
    };
    auto swap = std::make_unique<Swap>();
    swap->layer = this;
    swap->base = &base;
    swap->name = todo.front();
    return swap;
  }

  void unmerge(torch::nn::Module& base) override {
    std::lock_guard<std::mutex> lock(mutex_);
    while (!merged_.empty()) {
      swap_tensors(base, *module(0, merged_.back()));
      merged_.pop_back();
    }
    publish();
  }

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward) override {
    if (active.size() != 1) {
      throw ConfigError("Trying to run forward with " + std::to_string(active.size()) +
                        " active adapters, but LN tuning does not allow inference with more than one adapter at a time");
    }
    return forward_layer_copy(kind(), *module(0, active.front()->name), x);
  }
};

class LNTuningBuilder final : public BuilderOf<const LNTuningConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    std::shared_ptr<torch::nn::Module> copy = copy_layer(base);  // every routed kind can be copied
    if (request.low_cpu_mem_usage) {
      at::NoGradGuard no_grad;
      // Python creates the copy on the meta device too; the checkpoint fills it.
      for (const auto& key : parameters_of(*copy).keys()) {
        const at::Tensor& t = *parameters_of(*copy).find(key);
        replace_tensor(*copy, key, at::empty(t.sizes(), t.options().device(at::kMeta)));
      }
    }
    auto record = std::make_shared<AdapterRecord>(request.adapter_name);
    return prepare_dict_adapter<LNTuningLayer>(request, method_, {record, {}, {{0, copy}}});
  }
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const LNTuningConfig& config) {
  return std::make_unique<LNTuningBuilder>(method, config);
}

}  // namespace peft::detail::ln_tuning
