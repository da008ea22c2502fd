#pragma once

// TrainableTokens on one layer (Python PEFT's TrainableTokensLayer): some rows of the weight (token ids of
// an Embedding, output units of a Linear) are replaced by trainable values, `trainable_tokens_delta`
// (one (len(indices), dim) tensor per adapter). Merging writes those rows into the weight and keeps what
// they held in `trainable_tokens_original`, so unmerging restores it.
//
// Weight tying: a layer whose weight is another adapted layer's own tensor (an lm_head tied to the input
// embedding) is "tied" to that layer, the owner. It registers the owner's `trainable_tokens_delta`
// container as its own (the same module, as Python registers the same ParameterDict), so there is one
// delta per adapter, trained through both layers, saved under both names as Python saves it. Only the
// owner writes the shared weight when merging.
//
// prepare_trainable_tokens() is the whole per-layer step, so another method's injection can put trainable
// tokens on a layer too (LoRA's trainable_token_indices).

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/modules/container/parameterdict.h>

#include "core/adapter_layer.h"
#include "core/method.h"

namespace peft::detail::trainable_tokens {

/// Where a layer's deltas live: its own container, or (tied) the container of the layer it shares its weight
/// with, which then creates, trains and merges them.
struct DeltaHome {
  std::shared_ptr<torch::nn::ParameterDictImpl> container;
  bool tied = false;
  std::string owner;  // tied: the owner's module name
};

/// The rows an adapter trains.
struct TokenRows {
  std::vector<int64_t> indices;
  bool init_weights = true;  // start from the current rows (a no-op) instead of random values
  /// Brought along by another method's adapter (LoRA's trainable_token_indices): checkpoints keep the delta as
  /// Python's TrainableTokensWrapper does, under "<layer>.token_adapter.", and nothing for a tied layer.
  bool wrapper = false;
};

class TrainableTokensLayer final : public AdapterLayer {
 public:
  struct Record : AdapterRecord {
    using AdapterRecord::AdapterRecord;
    std::vector<int64_t> indices;
    at::Tensor index;  // the indices as an int64 tensor (CPU)
    bool wrapper = false;  // TokenRows::wrapper
  };

  TrainableTokensLayer(const LayerRequest& request, const Method& method, DeltaHome home);

  std::string peft_type() const override { return method_.peft_type(); }
  const DeltaHome& home() const { return home_; }
  bool tied() const { return home_.tied; }

  std::vector<std::string> container_names() const override;
  std::vector<std::string> checkpoint_container_names() const override;
  /// Registers the containers on the base layer; `self` is this layer (the anchor keeps it alive).
  void attach(torch::nn::Module& base, const std::shared_ptr<TrainableTokensLayer>& self);

  at::Tensor forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) override;

  /// Adds an adapter: its record, and for an owner its delta and the rows it replaces.
  void add(std::shared_ptr<const Record> record, const at::Tensor& delta, const at::Tensor& original,
           std::shared_ptr<const PeftConfig> config);
  void remove_adapter(torch::nn::Module& base, const std::string& name) override;

  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module& base, const std::vector<std::string>& names,
                                               bool safe_merge) override;
  void unmerge(torch::nn::Module& base) override;

 protected:
  std::string checkpoint_submodule(const std::string& adapter) const override;
  bool tensors_held_elsewhere(const std::string& adapter) const override;

 private:
  /// Whether `adapter` came with another method's adapter (records_ read directly: see checkpoint_submodule).
  bool is_wrapper(const std::string& adapter) const;
  friend class PendingTokensMerge;

  const at::Tensor& delta(const std::string& adapter) const;
  /// The weight with every adapter's rows put in place (what the layer computes with).
  at::Tensor with_rows(at::Tensor weight, const std::vector<const Record*>& adapters) const;

  const Method& method_;
  DeltaHome home_;
  std::shared_ptr<AnchoredImpl<BufferDictImpl>> anchor_;  // trainable_tokens_original, until attach() hands it over
  BufferDictImpl* originals_;                             // the anchor (the base layer owns it once attached)
};

/// The weight the layer's forward uses (LinearImpl::weight / EmbeddingImpl::weight), which is what a tied
/// head shares with the embedding, even when only that member was assigned.
at::Tensor used_weight(const BaseLayer& base);

/// Whether two weights are one tensor (the same storage seen the same way).
bool same_weight(const at::Tensor& a, const at::Tensor& b);

/// The input embedding and the layers tied to it. Python asks the model (get_input_embeddings, tie_word_embeddings);
/// a LibTorch model has neither, so the input embedding is the Embedding named "embed_tokens" (Python's default name),
/// else the first Embedding whose weight another layer uses, and its tied layers are the Linear/Embedding layers using
/// that same weight tensor.
struct TiedGroup {
  std::string embedding;          // empty: no Embedding shares its weight
  std::vector<std::string> tied;
};
TiedGroup find_tied_group(const std::vector<std::pair<std::string, torch::nn::Module*>>& layers);

/// The container an owner layer keeps its deltas in: the one it has, or a new one.
DeltaHome own_deltas(const LayerRequest& request);

/// The change that gives `request`'s layer the adapter `request.adapter_name` training `rows`, with its deltas
/// in `home`. Throws (changing nothing) for layers TrainableTokens cannot adapt, indices the layer lacks, and
/// a layer whose earlier trainable tokens are not tied the way `home` says.
std::unique_ptr<PendingChange> prepare_trainable_tokens(const LayerRequest& request, const Method& method,
                                                        const TokenRows& rows, const DeltaHome& home);

}  // namespace peft::detail::trainable_tokens
