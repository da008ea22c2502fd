#pragma once

// The shared layer for methods whose adapters are tensors in ParameterDicts (or small modules in
// ModuleDicts) named as in Python PEFT: LoHa's hada_w1_a..., LoKr's lokr_w1..., IA3's ia3_l, OFT's oft_R,
// BOFT, HRA, FourierFT, C3A, MiSS, AdaLoRA, LN tuning. It owns the containers, adding/removing adapters and
// the generic merge (compute every new weight, check, then write). A method supplies what differs: its
// forward with the active adapters and its merge step.

#include <memory>
#include <string>
#include <vector>

#include "core/adapter_layer.h"
#include "core/method.h"

namespace peft::detail {

class DictAdapterLayer : public AdapterLayer {
 public:
  using ActiveAdapters = std::vector<std::shared_ptr<const AdapterRecord>>;

  struct Container {
    std::string name;
    bool holds_modules = false;  // ModuleDict (one module per adapter) instead of ParameterDict
    bool in_checkpoint = true;   // false: bookkeeping the checkpoint leaves out (AdaLoRA's ranknum)
    bool holds_buffers = false;  // BufferDict: tensors that are not trained (SHiRA's indices, VeRA's projections)
  };

  /// An adapter prepared for commit: its record, and its tensors / modules by container index.
  struct NewAdapter {
    std::shared_ptr<const AdapterRecord> record;
    std::vector<std::pair<size_t, at::Tensor>> tensors;
    std::vector<std::pair<size_t, std::shared_ptr<torch::nn::Module>>> modules;
  };

  DictAdapterLayer(const LayerRequest& request, const Method& method, std::vector<Container> containers);

  /// Makes this layer's containers (the first is the anchor owning `layer`) for attaching to the base layer.
  static std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> make_containers(
      const std::shared_ptr<DictAdapterLayer>& layer);

  std::string peft_type() const override { return method_.peft_type(); }
  const Method& method() const { return method_; }
  const std::vector<Container>& container_list() const { return containers_; }
  std::vector<std::string> container_names() const override;
  std::vector<std::string> checkpoint_container_names() const override;

  at::Tensor forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) final;

  void add(NewAdapter adapter, std::shared_ptr<const PeftConfig> config);
  void remove_adapter(torch::nn::Module& base, const std::string& name) override;

  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module& base, const std::vector<std::string>& names,
                                               bool safe_merge) override;
  void unmerge(torch::nn::Module& base) override;

  /// The tensor an adapter keeps in container `index` (for a ModuleDict: that module's "weight"; for a
  /// BufferDict: its buffer). A shared container (Method::SharedContainer) holds the same tensor in every
  /// layer of the adapter.
  const at::Tensor& param(size_t index, const std::string& adapter) const;
  bool has_param(size_t index, const std::string& adapter) const;
  std::shared_ptr<torch::nn::Module> module(size_t index, const std::string& adapter) const;

  /// The base layer's weight and bias (undefined when it has none), detached: what merges start from.
  std::pair<at::Tensor, at::Tensor> detached_weight_and_bias() const;

 protected:
  /// The layer output with these adapters active (not disabled, not merged).
  virtual at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active, BaseForward base_forward) = 0;
  /// One adapter merged into (weight, bias); returns the new pair (bias may stay undefined). The default adds
  /// delta_weight() to the weight. Throws MergeError when the adapter cannot be merged.
  virtual std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                       const AdapterRecord& record) const;
  /// The inverse of merge_step.
  virtual std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                         const AdapterRecord& record) const;
  /// The additive update of the base weight, laid out like it (for methods that merge additively).
  virtual at::Tensor delta_weight(const AdapterRecord& record) const;
  /// Whether merging changes the bias too (then safe merges check it as well).
  virtual bool merge_touches_bias() const { return false; }
  /// Per-sample adapters (AdapterNamesPerSample; Python's `adapter_names=`): methods whose Python layer has a
  /// _mixed_batch_forward return true and implement forward_rows. The default refuses them.
  virtual bool supports_per_sample() const { return false; }
  /// The output rows of one per-sample group: `x` the group's input rows, `result` the same rows of the layer
  /// output so far (the base output), `record` the group's adapter.
  virtual at::Tensor forward_rows(torch::nn::Module& base, const at::Tensor& x, const at::Tensor& result,
                                  const AdapterRecord& record);
  /// The unmerge of methods that keep the weight from before the first merge (merge_from_original.h): `kept`
  /// comes back into the base weight (cast to its device and dtype) and every adapter is unmerged.
  void unmerge_to_kept_weight(at::Tensor& kept);

 private:
  at::Tensor forward_per_sample(torch::nn::Module& base, const at::Tensor& x, BaseForward base_forward,
                                const AdapterSnapshot& state, const SampleRouting& routing);

  const Method& method_;
  std::vector<Container> containers_;
  std::vector<torch::nn::Module*> dicts_;  // owned by the base layer (the first is the anchor, which owns this)

  friend class PendingDictMerge;
};

}  // namespace peft::detail
