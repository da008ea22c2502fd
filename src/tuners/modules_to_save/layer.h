#pragma once

// modules_to_save: a whole trainable copy of a layer per adapter (Python PEFT's ModulesToSaveWrapper).
// The copy lives in the layer's `modules_to_save` ModuleDict; forward uses the active adapter's copy, or
// the layer itself when the active adapter has none. Checkpoint keys are the layer's own names
// (`lm_head.weight`), as in Python PEFT.

#include <map>
#include <memory>

#include "core/tuner_layer.h"
#include "core/tuner_registry.h"

namespace peft::detail {

class ModulesToSaveLayer final : public TunerLayer {
 public:
  static std::shared_ptr<ModulesToSaveLayer> create(
      const BaseLayer& base, std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>& attachments);
  explicit ModulesToSaveLayer(const BaseLayer& base) : TunerLayer(base), active_copy_(nullptr) {}

  const char* peft_type() const override { return "MODULES_TO_SAVE"; }
  std::vector<std::string> container_names() const override { return {"modules_to_save"}; }
  at::Tensor forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) override;
  void set_active_adapters(torch::nn::Module& base, const std::vector<std::string>& names, bool inference_mode) override;

  void add(const std::string& adapter, std::shared_ptr<torch::nn::Module> copy, std::shared_ptr<const PeftConfig> config);
  void remove_adapter(torch::nn::Module& base, const std::string& name) override;
  /// Nothing to merge: the copy is the trained layer.
  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module&, const std::vector<std::string>&, bool) override {
    return nullptr;
  }
  /// The layer takes over the active adapter's copy (its tensors), as Python PEFT's unload returns it.
  void prepare_unload(torch::nn::Module& base) override;

 protected:
  void publish() override;
  std::string checkpoint_key(std::string key) const override;

 private:
  at::Tensor forward_per_sample(const at::Tensor& input, BaseForward base_forward, const SampleRouting& routing);

  torch::nn::ModuleDictImpl* copies_ = nullptr;  // the anchor, which owns this object
  std::map<std::string, std::shared_ptr<torch::nn::Module>> by_name_;
  std::shared_ptr<torch::nn::Module> active_copy_;  // read with std::atomic_load
};

/// Prepares a copy of `base` for `adapter` (fails for layer types peft-cpp cannot route).
std::unique_ptr<PendingChange> prepare_modules_to_save(const BaseLayer& base, const std::string& module_name,
                                                       const std::string& adapter, std::shared_ptr<const PeftConfig> config,
                                                       TunerLayer* existing);

}  // namespace peft::detail
