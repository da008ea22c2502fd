#pragma once

// The adapters of one adapted layer, and how the layer finds them.
//
// An adapted layer keeps its own parameters and gains the method's containers as children, named as in
// Python PEFT (lora_dropout, lora_A, lora_B, ...), each keyed by adapter name. The first container
// registered is an "anchor": besides being that container it owns the layer's TunerLayer, the object with
// the per-layer state (which adapters exist and are active, what is merged) and the method's math. The
// routed forward finds the anchor among the layer's children; no global table is involved, so the state
// lives and dies with the layer.

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <c10/util/C++17.h>  // FunctionRef.h uses c10::invoke_result_t without including it
#include <c10/util/FunctionRef.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/parameterdict.h>

#include <peft/config.h>
#include <peft/lifecycle.h>

#include "core/base_layer.h"
#include "core/module_access.h"

namespace peft::detail {

using BaseForward = c10::function_ref<at::Tensor(const at::Tensor&)>;
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
};

/// One tensor of an adapter: its checkpoint key relative to the layer ("lora_A.weight") and the registry
/// slot that holds it.
struct AdapterTensor {
  std::string key;        // checkpoint key relative to the layer, adapter name removed
  std::string model_key;  // the model's own key relative to the layer ("lora_A.default.weight")
  torch::nn::Module* owner;
  std::string name;
  bool is_buffer = false;

  const at::Tensor& get() const;
};

class TunerLayer {
 public:
  explicit TunerLayer(const BaseLayer& base) : base_(base) {}
  virtual ~TunerLayer() = default;
  TunerLayer(const TunerLayer&) = delete;
  TunerLayer& operator=(const TunerLayer&) = delete;

  virtual const char* peft_type() const = 0;
  LayerKind kind() const { return base_.kind; }
  /// The adapted layer (which owns this object through the anchor, so the pointer stays valid).
  const BaseLayer& base_layer() const { return base_; }

  /// The layer's output with its active adapters applied. `base_forward` computes the layer's own output.
  virtual at::Tensor forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) = 0;

  /// The containers this tuner registers on the base layer, in registration order.
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

  /// Activates `names` (names this layer lacks are kept, as in Python PEFT, and ignored in forward) and sets
  /// requires_grad on this layer's adapter tensors: true for active adapters unless `inference_mode`.
  virtual void set_active_adapters(torch::nn::Module& base, const std::vector<std::string>& names,
                                   bool inference_mode);
  std::vector<std::string> active_adapters() const;

  /// Disabled layers run their base output only; their adapter tensors stop requiring grad.
  void set_disabled(torch::nn::Module& base, bool disabled);
  bool disabled() const;

  /// Every tensor of `adapter` on this layer; `base` is the adapted layer.
  std::vector<AdapterTensor> adapter_tensors(const torch::nn::Module& base, const std::string& adapter) const;

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

 protected:
  /// Records a new adapter (called by commit).
  void add_adapter_record(const std::string& name, std::shared_ptr<const PeftConfig> config);
  void remove_adapter_record(const std::string& name);
  /// Rebuilds what forward reads after the adapter set, the active set or the merge state changed.
  /// Called with mutex_ held.
  virtual void publish() = 0;
  /// Maps a key derived from the registries ("lora_magnitude_vector.weight") to the checkpoint key.
  virtual std::string checkpoint_key(std::string key) const { return key; }
  /// The per-sample adapters of the calling thread, if they apply to this layer.
  const SampleRouting* sample_routing() const;

  mutable std::mutex mutex_;  // serialises changes; forward never takes it
  std::vector<std::pair<std::string, std::shared_ptr<const PeftConfig>>> adapters_;
  std::vector<std::string> active_;
  bool disabled_ = false;
  std::vector<std::string> merged_;  // merge order, undone last-in first-out

 private:
  BaseLayer base_;
};

/// Mixin of the anchor container: keeps the layer's TunerLayer alive and lets the router find it.
class TunerAnchor {
 public:
  virtual ~TunerAnchor() = default;
  std::shared_ptr<TunerLayer> tuner;
};

/// torch::nn::ParameterDict printing on one line (LibTorch's print breaks the model printout's indentation).
class ParameterDictImpl : public torch::nn::ParameterDictImpl {
 public:
  void pretty_print(std::ostream& stream) const override;
};

/// A Python-named container that is also the anchor. It prints and behaves exactly like `Dict`.
template <class Dict>
class AnchoredImpl : public Dict, public TunerAnchor {
 public:
  using Dict::Dict;
};
using AnchoredModuleDictImpl = AnchoredImpl<torch::nn::ModuleDictImpl>;
using AnchoredParameterDictImpl = AnchoredImpl<ParameterDictImpl>;

TunerLayer* find_tuner_among(const ChildMap& children);

/// The TunerLayer of an adapted layer, or nullptr. Cheap for layers without children (the unadapted case):
/// one load and one compare.
inline TunerLayer* find_tuner(const torch::nn::Module& layer) {
  const ChildMap& children = children_of(layer);
  if (children.is_empty()) return nullptr;
  return find_tuner_among(children);
}

/// Names and registers `containers` on `base` in order; the first must be an anchor holding `tuner`.
void attach_containers(torch::nn::Module& base,
                       const std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>& containers);
/// Removes the tuner's containers from `base` (destroying the tuner): the layer is a plain layer again.
void detach_containers(torch::nn::Module& base, const std::vector<std::string>& container_names);

/// Throws if `base` already has children with any of these names (a user module that happens to use them).
void check_container_names_free(const torch::nn::Module& base, const std::string& module_name,
                                const std::vector<std::string>& names);

/// Removes `key` from a ModuleDict and unregisters it (ModuleDict::pop keeps the registration).
void erase_from(torch::nn::ModuleDictImpl& dict, const std::string& key);

}  // namespace peft::detail
