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

#include "core/adapter_layer.h"
#include "core/method.h"

namespace peft::detail::lora {

class DoraMagnitudeImpl;
class ArrowRouter;

/// One adapter on one layer. Immutable once published: forward reads it without taking a lock (a change
/// of scaling publishes a new record).
struct LoraAdapter : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  int64_t r = 0;
  double alpha = 0;
  double scaling = 0;
  bool use_rslora = false;
  bool use_dora = false;
  bool lora_bias = false;
  bool frozen_B = false;  // MiCA: only A trains
  bool alora = false;     // aLoRA: acts only from each row's invocation tokens on (alora.h)
  std::shared_ptr<ArrowRouter> arrow;  // arrow_config set: this adapter routes over the task adapters (arrow.h)
  // BD-LoRA: blocks of a block-diagonal lora_A / lora_B (0: a plain factor); see bdlora.h.
  int64_t bd_blocks_A = 0;
  int64_t bd_blocks_B = 0;
  bool block_diagonal() const { return bd_blocks_A || bd_blocks_B; }
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

class LoraLayer final : public AdapterLayer {
 public:
  static const std::vector<std::string>& containers();

  /// A new, empty LoRA layer; `attachments` receives the containers to register on the base layer (the
  /// anchor first).
  static std::shared_ptr<LoraLayer> create(
      const LayerRequest& request, const Method& method,
      std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>& attachments);

  LoraLayer(const LayerRequest& request, const Method& method);

  std::string peft_type() const override { return method_.peft_type(); }
  std::vector<std::string> container_names() const override { return containers(); }
  at::Tensor forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) override;
  /// Python's lora.MultiheadAttention forward: the attention with the active adapters' deltas added to in_proj_weight
  /// and (from the out_proj's own LoRA layer) to out_proj's weight (attention.cpp).
  std::tuple<at::Tensor, at::Tensor> forward_attention(torch::nn::MultiheadAttentionImpl& base,
                                                       const AttentionCall& call, AttentionForward original) override;

  /// Registers a prepared adapter in the containers (commit step; does not throw).
  void add(std::shared_ptr<LoraAdapter> adapter, std::shared_ptr<const PeftConfig> config);
  void remove_adapter(torch::nn::Module& base, const std::string& name) override;

  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module& base, const std::vector<std::string>& names,
                                               bool safe_merge) override;
  void unmerge(torch::nn::Module& base) override;
  /// scaling * B A laid out like the base weight (Python's get_delta_weight).
  at::Tensor delta_weight(const LoraAdapter& adapter) const;

  std::shared_ptr<const LoraAdapter> adapter(const std::string& name) const;
  /// Publishes the adapter with a new scaling (hot-swapping another adapter's alpha/rank in).
  void set_scaling(const std::string& name, double scaling);
  std::optional<std::vector<std::pair<std::string, double>>> lora_scalings() const override;
  void set_lora_scaling(const std::string& adapter, double scaling) override { set_scaling(adapter, scaling); }
  /// The A and B weights (or embedding A/B) of an adapter, as registered.
  std::pair<at::Tensor, at::Tensor> lora_weights(const LoraAdapter& adapter) const;

  bool fan_in_fan_out() const { return fan_in_fan_out_; }
  /// This layer is the out_proj of a LoRA'd MultiheadAttention (attention.cpp). Python PEFT 0.20 adds its delta
  /// twice: lora.MultiheadAttention.merge adds it to out_proj's weight and then calls out_proj's own merge, which
  /// adds it again (in its forward, which merges and unmerges, and in merge_and_unload alike; the gradient flows
  /// through one of the two). Adapters trained in Python were trained that way, so delta_weight() is 2 B A s here.
  bool doubled_delta() const { return doubled_delta_; }
  void mark_attention_out_proj(const std::string& attention) {
    set_checkpoint_module(attention + ".base_layer.out_proj");
    doubled_delta_ = true;
  }
  /// The embedding of `ids` with `weight` and the base Embedding's options.
  at::Tensor embed(torch::nn::Module& base, const at::Tensor& ids, const at::Tensor& weight) const;

 protected:
  std::string checkpoint_key(std::string key) const override;
  bool frozen_container(const std::string& adapter, const std::string& container) const override;

 private:
  at::Tensor forward_linear(torch::nn::Module& base, const at::Tensor& x, at::Tensor result,
                            const AdapterSnapshot& state, BaseForward base_forward);
  at::Tensor forward_embedding(torch::nn::Module& base, const at::Tensor& x, at::Tensor result,
                               const AdapterSnapshot& state);
  at::Tensor forward_conv(torch::nn::Module& base, const at::Tensor& x, at::Tensor result, const AdapterSnapshot& state,
                          BaseForward base_forward);
  at::Tensor forward_per_sample(torch::nn::Module& base, const at::Tensor& x, BaseForward base_forward,
                                const AdapterSnapshot& state, const SampleRouting& routing);
  /// The plain LoRA branch (no DoRA) of one adapter on `x`, scaled.
  at::Tensor lora_branch(torch::nn::Module& base, const LoraAdapter& a, const at::Tensor& x);
  at::Tensor base_without_bias(const at::Tensor& x, BaseForward base_forward) const;

  friend class PendingMerge;

  const Method& method_;
  torch::nn::ModuleDictImpl* dropout_ = nullptr;  // the anchor, which owns this object
  std::shared_ptr<torch::nn::ModuleDictImpl> A_;
  std::shared_ptr<torch::nn::ModuleDictImpl> B_;
  std::shared_ptr<ParameterDictImpl> embedding_A_;
  std::shared_ptr<ParameterDictImpl> embedding_B_;
  std::shared_ptr<torch::nn::ModuleDictImpl> magnitude_;
  bool fan_in_fan_out_ = false;
  bool doubled_delta_ = false;  // mark_attention_out_proj

  std::map<std::string, at::Tensor> dora_norms_;  // ||W + delta|| at merge time, needed to unmerge DoRA
};

/// The LoRA record behind a snapshot entry.
inline const LoraAdapter& lora(const AdapterRecord& record) { return static_cast<const LoraAdapter&>(record); }

}  // namespace peft::detail::lora
