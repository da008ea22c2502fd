#pragma once

// LoRA on one layer (Linear, peft::LinearLike, Embedding, Conv1d/2d/3d): Python PEFT's lora.Linear,
// lora.Embedding and lora.ConvNd in one class. Forward math is in layer.cpp, merging in merge.cpp,
// rank padding and weight swapping in hotswap.cpp.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/parameterdict.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include "core/tuner_layer.h"

namespace peft::detail::lora {

class DoraMagnitudeImpl;

/// One adapter on one layer. Immutable once published: forward reads it without taking a lock (a change
/// of scaling publishes a new Adapter).
struct Adapter {
  std::string name;
  int64_t r = 0;
  double alpha = 0;
  double scaling = 0;
  bool use_rslora = false;
  bool use_dora = false;
  bool lora_bias = false;
  double dropout = 0;
  std::shared_ptr<torch::nn::Module> A;  // Linear for linear layers, Conv for conv layers; unset for embeddings
  std::shared_ptr<torch::nn::Module> B;
  std::shared_ptr<torch::nn::Module> dropout_module;  // Dropout, or Identity when dropout == 0
  std::shared_ptr<torch::nn::Module> magnitude;       // DoraMagnitude, DoRA only
  // The same objects, cast once (LibTorch layers derive virtually from Module).
  torch::nn::LinearImpl* linear_A = nullptr;  // linear layers
  torch::nn::LinearImpl* linear_B = nullptr;
  torch::nn::DropoutImpl* dropout_impl = nullptr;  // null for Identity
  const DoraMagnitudeImpl* magnitude_impl = nullptr;
  // Embeddings only, as created; forward reads the registered tensors, which loading may replace.
  at::Tensor embedding_A;  // (r, num_embeddings)
  at::Tensor embedding_B;  // (embedding_dim, r)
};

/// What forward needs, swapped in one piece when anything changes.
struct View {
  std::vector<std::shared_ptr<const Adapter>> active;
  std::vector<std::shared_ptr<const Adapter>> all;
  bool disabled = false;
  bool merged = false;
};

class LoraLayer final : public TunerLayer {
 public:
  static const std::vector<std::string>& containers();

  /// A new, empty LoRA layer for `base`; `attachments` receives the containers to register on the base
  /// layer (the anchor first).
  static std::shared_ptr<LoraLayer> create(
      const BaseLayer& base, std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>& attachments);

  LoraLayer(const BaseLayer& base, std::shared_ptr<torch::nn::ModuleDictImpl> A,
            std::shared_ptr<torch::nn::ModuleDictImpl> B, std::shared_ptr<ParameterDictImpl> embedding_A,
            std::shared_ptr<ParameterDictImpl> embedding_B, std::shared_ptr<torch::nn::ModuleDictImpl> magnitude);

  const char* peft_type() const override { return "LORA"; }
  std::vector<std::string> container_names() const override { return containers(); }
  at::Tensor forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) override;

  /// Registers a prepared adapter in the containers (commit step; does not throw).
  void add(std::shared_ptr<Adapter> adapter, std::shared_ptr<const PeftConfig> config);
  void remove_adapter(torch::nn::Module& base, const std::string& name) override;

  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module& base, const std::vector<std::string>& names,
                                               bool safe_merge) override;
  void unmerge(torch::nn::Module& base) override;
  /// scaling * B A laid out like the base weight (Python's get_delta_weight).
  at::Tensor delta_weight(const Adapter& adapter) const;

  std::shared_ptr<const Adapter> adapter(const std::string& name) const;
  /// Publishes the adapter with a new scaling (hot-swapping another adapter's alpha/rank in).
  void set_scaling(const std::string& name, double scaling);
  /// The A and B weights (or embedding A/B) of an adapter, as registered.
  std::pair<at::Tensor, at::Tensor> lora_weights(const Adapter& adapter) const;

  bool fan_in_fan_out() const { return fan_in_fan_out_; }

 protected:
  void publish() override;
  std::string checkpoint_key(std::string key) const override;

 private:
  at::Tensor forward_linear(torch::nn::Module& base, const at::Tensor& x, at::Tensor result, const View& view,
                            BaseForward base_forward);
  at::Tensor forward_embedding(torch::nn::Module& base, const at::Tensor& x, at::Tensor result, const View& view);
  at::Tensor forward_conv(torch::nn::Module& base, const at::Tensor& x, at::Tensor result, const View& view,
                          BaseForward base_forward);
  at::Tensor forward_per_sample(torch::nn::Module& base, const at::Tensor& x, BaseForward base_forward,
                                const View& view, const SampleRouting& routing);
  /// The plain LoRA branch (no DoRA) of one adapter on `x`, scaled.
  at::Tensor lora_branch(torch::nn::Module& base, const Adapter& a, const at::Tensor& x);
  at::Tensor base_without_bias(const at::Tensor& x, BaseForward base_forward) const;
  at::Tensor embed(torch::nn::Module& base, const at::Tensor& ids, const at::Tensor& weight) const;

  friend class PendingMerge;

  torch::nn::ModuleDictImpl* dropout_ = nullptr;  // the anchor, which owns this object
  std::shared_ptr<torch::nn::ModuleDictImpl> A_;
  std::shared_ptr<torch::nn::ModuleDictImpl> B_;
  std::shared_ptr<ParameterDictImpl> embedding_A_;
  std::shared_ptr<ParameterDictImpl> embedding_B_;
  std::shared_ptr<torch::nn::ModuleDictImpl> magnitude_;
  bool fan_in_fan_out_ = false;

  std::map<std::string, std::shared_ptr<const Adapter>> by_name_;
  std::map<std::string, at::Tensor> dora_norms_;  // ||W + delta|| at merge time, needed to unmerge DoRA
  std::shared_ptr<const View> view_;  // read with std::atomic_load, replaced with std::atomic_store
};

}  // namespace peft::detail::lora
