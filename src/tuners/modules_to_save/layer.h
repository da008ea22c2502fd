#pragma once

// modules_to_save: a whole trainable copy of a layer per adapter (Python PEFT's ModulesToSaveWrapper).
// The copy lives in the layer's `modules_to_save` ModuleDict; forward uses the active adapter's copy, or
// the layer itself when the active adapter has none. Checkpoint keys are the layer's own names
// (`lm_head.weight`), as in Python PEFT.

#include <memory>

#include "core/adapter_layer.h"

namespace peft::detail {

/// Whether a layer's adapters are modules_to_save copies rather than an adapter method's.
inline bool is_modules_to_save(const AdapterLayer& adapters) { return adapters.peft_type() == "MODULES_TO_SAVE"; }

class ModulesToSaveLayer final : public AdapterLayer {
 public:
  ModulesToSaveLayer(const BaseLayer& base, std::string module_name);

  std::string peft_type() const override { return "MODULES_TO_SAVE"; }
  std::vector<std::string> container_names() const override { return {"modules_to_save"}; }
  at::Tensor forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) override;
  void set_active_adapters(torch::nn::Module& base, const std::vector<std::string>& names, bool inference_mode) override;

  /// Registers a prepared copy (commit step; does not throw).
  void add(const std::string& adapter, std::shared_ptr<torch::nn::Module> copy, std::shared_ptr<const PeftConfig> config);
  void remove_adapter(torch::nn::Module& base, const std::string& name) override;
  /// Nothing to merge: the copy is the trained layer.
  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module&, const std::vector<std::string>&, bool) override {
    return nullptr;
  }
  /// The layer takes over the active adapter's copy (its tensors), as Python PEFT's unload returns it.
  void prepare_unload(torch::nn::Module& base) override;

  /// The container to attach when the layer has no copies yet (it owns this object).
  std::shared_ptr<torch::nn::Module> make_anchor(const std::shared_ptr<ModulesToSaveLayer>& self);

 protected:
  std::string checkpoint_key(std::string key) const override;

 private:
  at::Tensor forward_per_sample(const at::Tensor& input, BaseForward base_forward, const AdapterSnapshot& state,
                                const SampleRouting& routing);

  torch::nn::ModuleDictImpl* copies_ = nullptr;  // the anchor, which owns this object
};

/// Prepares a copy of `base` for `adapter` (fails for layer types peft-cpp cannot copy). With `tied_weight`, the
/// copy's weight is that tensor (LoRA's ensure_weight_tying: a tied lm_head's copy uses the embedding's copy).
std::unique_ptr<PendingChange> prepare_modules_to_save(const BaseLayer& base, const std::string& module_name,
                                                       const std::string& adapter, std::shared_ptr<const PeftConfig> config,
                                                       AdapterLayer* existing, const at::Tensor& tied_weight = {});

/// The copy a change from prepare_modules_to_save adds, or nullptr for any other change.
std::shared_ptr<torch::nn::Module> prepared_copy(const PendingChange& change);

}  // namespace peft::detail
