#pragma once

// The adapters of one adapted layer, and how the layer finds them.
//
// Glossary (ARCHITECTURE.md has the whole picture):
//   base layer     the user's layer being adapted (a torch::nn::Linear, ...). It keeps its own parameters.
//   container      a ModuleDict / ParameterDict child the method registers on the base layer, named as in
//                  Python PEFT (lora_A, hada_w1_a, ...) and keyed by adapter name.
//   anchor         the first container registered; besides being that container it owns the AdapterLayer.
//   AdapterLayer   the per-layer state (which adapters exist, which are active, what is merged) and the
//                  method's math. Python PEFT's BaseTunerLayer. Found from the base layer through its anchor,
//                  so it lives and dies with the layer; no global table is involved.
//   AdapterRecord  what a method keeps per adapter besides its tensors (rank, scaling, ...).
//   AdapterSnapshot  what forward reads: replaced as a whole whenever the adapter set, the active set or the
//                  merge state changes, so a forward sees one consistent state without taking a lock.
//   PendingChange  a change prepared without touching the model; commit() applies it and cannot fail.

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <c10/util/C++17.h>  // FunctionRef.h uses c10::invoke_result_t without including it
#include <c10/util/FunctionRef.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/parameterdict.h>

#include <peft/config.h>
#include <peft/lifecycle.h>

#include "core/layer_kinds.h"
#include "core/module_access.h"

namespace torch::nn {
class MultiheadAttentionImpl;
}  // namespace torch::nn

namespace peft::detail {

using BaseForward = c10::function_ref<at::Tensor(const at::Tensor&)>;
struct AttentionCall;  // routing/router.h
using AttentionForward = c10::function_ref<std::tuple<at::Tensor, at::Tensor>(const AttentionCall&)>;
using SampleRouting = AdapterNamesPerSample::Routing;

/// A change prepared without touching the model. commit() applies it and must not throw: everything that
/// can fail (validation, allocation, initialisation, NaN checks) happens while preparing.
class PendingChange {
 public:
  virtual ~PendingChange() = default;
  virtual void commit() = 0;
  /// The shapes of the tensors the change will create, by checkpoint key relative to the layer, so a
  /// state dict can be checked against them before anything is attached.
  virtual std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_shapes() const { return {}; }
  /// Of those, the ones holding integers (index tensors such as SHiRA's shira_indices) instead of
  /// floating-point weights, with their dtype.
  virtual std::vector<std::pair<std::string, c10::ScalarType>> checkpoint_integer_dtypes() const { return {}; }
};

/// One tensor of an adapter: its checkpoint key relative to the layer ("lora_A.weight") and the registry
/// slot that holds it.
struct AdapterTensor {
  std::string key;        // checkpoint key relative to the layer, adapter name removed
  std::string model_key;  // the model's own key relative to the layer ("lora_A.default.weight")
  torch::nn::Module* owner;
  std::string name;
  bool is_buffer = false;
  /// A parameter the method keeps frozen whatever trains (MiCA's lora_B): requires_grad is never set on it.
  bool frozen = false;

  const at::Tensor& get() const;
};

/// What a method keeps per adapter besides its tensors. Immutable once published.
struct AdapterRecord {
  explicit AdapterRecord(std::string adapter_name) : name(std::move(adapter_name)) {}
  virtual ~AdapterRecord() = default;
  std::string name;
};

/// What forward reads.
struct AdapterSnapshot {
  std::vector<std::shared_ptr<const AdapterRecord>> active;  // the active adapters this layer has, in order
  std::vector<std::shared_ptr<const AdapterRecord>> all;     // every adapter of the layer
  bool disabled = false;
  bool merged = false;
  /// The base output alone: no active adapter, disabled, or merged.
  bool bypass() const { return active.empty() || disabled || merged; }
  const AdapterRecord* find(const std::string& name) const;
};

class AdapterLayer {
 public:
  AdapterLayer(const BaseLayer& base, std::string module_name);
  virtual ~AdapterLayer() = default;
  AdapterLayer(const AdapterLayer&) = delete;
  AdapterLayer& operator=(const AdapterLayer&) = delete;

  virtual std::string peft_type() const = 0;
  LayerKind kind() const { return base_.kind; }
  /// The adapted layer (which owns this object through the anchor, so the pointer stays valid).
  const BaseLayer& base_layer() const { return base_; }
  /// The layer's name in the model when the first adapter was injected (for messages).
  const std::string& module_name() const { return module_name_; }

  /// The layer's output with its active adapters applied. `base_forward` computes the layer's own output.
  virtual at::Tensor forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) = 0;
  /// The same for a torch::nn::MultiheadAttention (only methods that adapt one override it).
  virtual std::tuple<at::Tensor, at::Tensor> forward_attention(torch::nn::MultiheadAttentionImpl& base,
                                                               const AttentionCall& call, AttentionForward original);

  /// The module name checkpoints use for this layer's tensors (Python PEFT keeps the out_proj of a LoRA'd
  /// MultiheadAttention under "<attention>.base_layer.out_proj"); `name` is its name in the model.
  std::string checkpoint_module(const std::string& name) const {
    return checkpoint_module_.empty() ? name : checkpoint_module_;
  }
  void set_checkpoint_module(std::string name) { checkpoint_module_ = std::move(name); }

  /// The containers this layer registers on the base layer, in registration order.
  virtual std::vector<std::string> container_names() const = 0;
  /// Those whose tensors are adapter weights (trained and saved); the default is all of them.
  virtual std::vector<std::string> checkpoint_container_names() const { return container_names(); }
  /// Replaces the config recorded for `adapter` (for settings that change during training).
  void replace_config(const std::string& adapter, std::shared_ptr<const PeftConfig> config);

  /// Adapter names in the order they were added.
  std::vector<std::string> adapter_names() const;
  bool has_adapter(const std::string& name) const;
  /// The config the adapter was injected with (after target expansion).
  std::shared_ptr<const PeftConfig> config_of(const std::string& name) const;

  /// Activates `names` (names this layer lacks are kept, as in Python PEFT, and ignored in forward) and
  /// sets requires_grad on this layer's adapter tensors: true for active adapters unless `inference_mode`.
  /// A flag is only written where it changes (forwards on other threads may be reading it).
  virtual void set_active_adapters(torch::nn::Module& base, const std::vector<std::string>& names, bool inference_mode);
  std::vector<std::string> active_adapters() const;

  /// Disabled layers run their base output only, and their adapter tensors stop requiring grad; enabling
  /// again gives the active adapters back the trainability the last set_active_adapters gave them.
  virtual void set_disabled(torch::nn::Module& base, bool disabled);
  bool disabled() const;

  /// Every tensor of `adapter` on this layer; `base` is the adapted layer. None where another layer holds them
  /// (tensors_held_elsewhere).
  /// (Layers whose containers nest, LoRA's parameter wrappers, list their tensors themselves.)
  virtual std::vector<AdapterTensor> adapter_tensors(const torch::nn::Module& base, const std::string& adapter) const;
  /// After adapter tensors of this layer were written in place (a state dict load): layers whose adapters live in
  /// the base tensors (LoRA's parameter targets) bring those up to date.
  virtual void tensors_written(torch::nn::Module& base) {}
  /// The base layer's parameter `name` as the base model has it (LoRA's target_parameters keep their deltas in it
  /// while active: the value without them), and the notice that it was overwritten with a base value.
  virtual at::Tensor base_value(const std::string& name, const at::Tensor& value) const { return value; }
  virtual void base_tensor_written(const std::string& name) {}
  /// Whether the tensors of `container` stay frozen for `adapter` (Python's frozen_peft_weight_names).
  virtual bool frozen_container(const std::string& adapter, const std::string& container) const { return false; }


  /// Adapters whose deltas are in the base weight, in merge order.
  std::vector<std::string> merged_adapters() const;
  /// Prepares merging these adapters (those this layer has and has not merged); throws when they cannot be
  /// merged (or, with `safe_merge`, when the result is not finite) without changing anything.
  virtual std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module& base, const std::vector<std::string>& names,
                                                       bool safe_merge);
  /// Undoes every merge, last first.
  virtual void unmerge(torch::nn::Module& base) {}
  /// Before the layer's containers are removed for good (unload).
  virtual void prepare_unload(torch::nn::Module& base) {}
  /// Removes one adapter's modules and records (the caller detaches the containers when none is left).
  virtual void remove_adapter(torch::nn::Module& base, const std::string& name) = 0;

  /// The adapter's record, or nullptr.
  std::shared_ptr<const AdapterRecord> record(const std::string& name) const;

  /// Python's LoraLayer.scaling, for the layers that are LoraLayers in Python (LoRA, AdaLoRA): each adapter's
  /// scaling, in the order the adapters were added; nullopt for every other method.
  virtual std::optional<std::vector<std::pair<std::string, double>>> lora_scalings() const { return std::nullopt; }
  /// Publishes `adapter` with a new scaling (layers with lora_scalings() only; an adapter the layer lacks is ignored).
  virtual void set_lora_scaling(const std::string& adapter, double scaling) {}

 protected:
  /// Records a new adapter and publishes it (called by commit).
  void add_adapter(std::shared_ptr<const AdapterRecord> record, std::shared_ptr<const PeftConfig> config);
  /// Forgets an adapter (its tensors are the caller's to remove) and publishes.
  void remove_adapter_record(const std::string& name);
  /// Replaces an adapter's record (e.g. a new scaling) and publishes.
  void replace_record(std::shared_ptr<const AdapterRecord> record);
  /// What forward reads; one atomic load.
  std::shared_ptr<const AdapterSnapshot> snapshot() const { return std::atomic_load(&snapshot_); }
  /// Rebuilds the snapshot after the adapter set, the active set or the merge state changed. Called with
  /// mutex_ held.
  void publish();
  /// Maps a key derived from the registries ("lora_magnitude_vector.weight") to the checkpoint key.
  virtual std::string checkpoint_key(std::string key) const { return key; }
  /// The sub-module under which checkpoints keep `adapter`'s tensors of this layer ("token_adapter" for the trainable
  /// tokens LoRA's trainable_token_indices brings along, as Python's TrainableTokensWrapper), or "". Called with
  /// mutex_ held or from a structural change (records_ may be read directly).
  virtual std::string checkpoint_submodule(const std::string& adapter) const { return {}; }
  /// Whether `adapter`'s tensors here are another layer's, which trains and saves them (a tied TrainableTokensWrapper:
  /// Python saves nothing for it). Called like checkpoint_submodule.
  virtual bool tensors_held_elsewhere(const std::string& adapter) const { return false; }
  /// The per-sample adapters of the calling thread, if they apply to this layer.
  const SampleRouting* sample_routing() const;

  mutable std::mutex mutex_;  // serialises changes; forward never takes it
  std::vector<std::pair<std::string, std::shared_ptr<const PeftConfig>>> adapters_;
  std::map<std::string, std::shared_ptr<const AdapterRecord>> records_;
  std::vector<std::string> active_;
  bool disabled_ = false;
  bool inference_mode_ = false;      // of the last set_active_adapters, restored when enabling
  std::vector<std::string> merged_;  // merge order, undone last-in first-out

 private:
  void set_trainable(torch::nn::Module& base, const std::vector<std::string>& trainable);
  /// Marks tensors[first..] frozen when frozen_container(adapter, container).
  void mark_frozen(std::vector<AdapterTensor>& tensors, size_t first, const std::string& adapter,
                   const std::string& container) const;

  BaseLayer base_;
  std::string module_name_;
  std::string checkpoint_module_;
  std::shared_ptr<const AdapterSnapshot> snapshot_;  // read with std::atomic_load, replaced with std::atomic_store
};

/// Mixin of the anchor container: keeps the layer's AdapterLayer alive and lets routing find it.
class AdapterAnchor {
 public:
  virtual ~AdapterAnchor() = default;
  std::shared_ptr<AdapterLayer> adapters;
};

/// torch::nn::ParameterDict printing on one line (LibTorch's print breaks the model printout's indentation).
class ParameterDictImpl : public torch::nn::ParameterDictImpl {
 public:
  void pretty_print(std::ostream& stream) const override;
};

/// Python PEFT's BufferDict: a buffer per adapter name, for adapter tensors that are state, not trained (VeRA's
/// projections vera_A / vera_B, TrainableTokens' original rows). Printed on one line like ParameterDictImpl.
class BufferDictImpl : public torch::nn::Module {
 public:
  BufferDictImpl() : torch::nn::Module("BufferDict") {}
  /// Registers `tensor` under `key`, or replaces the one there.
  void set(const std::string& key, const at::Tensor& tensor);
  /// Removes `key` if present.
  void erase(const std::string& key);
  /// The tensor under `key`, or nullptr.
  const at::Tensor* find(const std::string& key) const;
  void pretty_print(std::ostream& stream) const override;
  /// A dtype change casts the floating-point buffers only, as PyTorch's Module.to does (LibTorch's casts every
  /// buffer): integer ones, such as SHiRA's shira_indices, keep their values.
  using torch::nn::Module::to;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
};

/// A Python-named container that is also the anchor. It prints and behaves exactly like `Dict`.
template <class Dict>
class AnchoredImpl : public Dict, public AdapterAnchor {
 public:
  using Dict::Dict;
};
using AnchoredModuleDictImpl = AnchoredImpl<torch::nn::ModuleDictImpl>;
using AnchoredParameterDictImpl = AnchoredImpl<ParameterDictImpl>;
using AnchoredBufferDictImpl = AnchoredImpl<BufferDictImpl>;

AdapterLayer* adapter_layer_among(const ChildMap& children);

/// The AdapterLayer of an adapted layer, or nullptr. Cheap for layers without children (the unadapted
/// case): one load and one compare.
inline AdapterLayer* adapter_layer_of(const torch::nn::Module& layer) {
  const ChildMap& children = children_of(layer);
  if (children.is_empty()) return nullptr;
  return adapter_layer_among(children);
}

/// adapters.forward(...), with LibTorch's error for adapter tensors on the meta device (a low_cpu_mem_usage
/// adapter that was never loaded) turned into one that names the adapter and the layer.
at::Tensor run_adapters(AdapterLayer& adapters, torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward);

/// Names and registers `containers` on `base` in order; the first must be an anchor holding the layer.
void attach_containers(torch::nn::Module& base,
                       const std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>& containers);
/// Keeps track of an adapted layer whose weight tensor was replaced (not just its values).
void weight_replaced(torch::nn::Module& base, const at::Tensor& old_weight);
/// Removes the layer's containers from `base` (destroying the AdapterLayer): a plain layer again.
void detach_containers(torch::nn::Module& base, const std::vector<std::string>& container_names);

/// Throws if `base` already has children with any of these names (a user module that happens to use them).
void check_container_names_free(const torch::nn::Module& base, const std::string& module_name,
                                const std::vector<std::string>& names);

/// Removes `key` from a ModuleDict and unregisters it (ModuleDict::pop keeps the registration).
void erase_from(torch::nn::ModuleDictImpl& dict, const std::string& key);

}  // namespace peft::detail
