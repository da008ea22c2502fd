#include "tuners/trainable_tokens/layer.h"

#include <algorithm>
#include <ostream>
#include <unordered_set>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>
#include <torch/nn/functional/embedding.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <peft/error.h>

#include "core/module_access.h"
#include "tuners/common/pending_adapter.h"

namespace peft::detail::trainable_tokens {
namespace {

using Record = TrainableTokensLayer::Record;

const std::string kDelta = "trainable_tokens_delta";
const std::string kOriginal = "trainable_tokens_original";

// Python's _check_overlapping_tokens: the first adapter (in order, each name once) that trains a row an
// earlier one trains too, or "".
std::string overlapping_adapter(const std::vector<const Record*>& adapters) {
  if (adapters.size() <= 1) return "";
  std::unordered_set<int64_t> rows;
  std::unordered_set<std::string> names;
  for (const Record* adapter : adapters) {
    if (!names.insert(adapter->name).second) continue;
    for (int64_t row : adapter->indices) {
      if (rows.count(row)) return adapter->name;
    }
    rows.insert(adapter->indices.begin(), adapter->indices.end());
  }
  return "";
}

std::string overlap_message(const std::string& adapter) {
  return "Token indices of adapter " + adapter + " are already defined and would result in undefined merging "
         "behavior. Only disjunct token indices are currently supported.";
}

}  // namespace

at::Tensor used_weight(const BaseLayer& base) {
  if (const auto* linear = dynamic_cast<const torch::nn::LinearImpl*>(base.module)) return linear->weight;
  if (const auto* embedding = dynamic_cast<const torch::nn::EmbeddingImpl*>(base.module)) return embedding->weight;
  return base.weight();
}

bool same_weight(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined() || !b.defined()) return false;
  if (a.unsafeGetTensorImpl() == b.unsafeGetTensorImpl()) return true;
  return a.is_alias_of(b) && a.sizes().equals(b.sizes()) && a.strides().equals(b.strides()) &&
         a.storage_offset() == b.storage_offset();
}

TrainableTokensLayer::TrainableTokensLayer(const LayerRequest& request, const Method& method, DeltaHome home)
    : AdapterLayer(request.base, request.module_name), method_(method), home_(std::move(home)),
      anchor_(std::make_shared<AnchoredImpl<BufferDictImpl>>()), originals_(anchor_.get()) {}

std::vector<std::string> TrainableTokensLayer::container_names() const { return {kDelta, kOriginal}; }

std::vector<std::string> TrainableTokensLayer::checkpoint_container_names() const { return {kDelta}; }

void TrainableTokensLayer::attach(torch::nn::Module& base, const std::shared_ptr<TrainableTokensLayer>& self) {
  TORCH_INTERNAL_ASSERT(anchor_ && self.get() == this, "trainable tokens layer attached twice");
  anchor_->adapters = self;
  // Python's order (delta, then originals). The delta container is never the anchor: a tied layer registers
  // its owner's, and each layer must find its own AdapterLayer.
  base.register_module(kDelta, home_.container);
  attach_containers(base, {{kOriginal, anchor_}});
  anchor_.reset();  // the base layer owns it now; holding it here would keep this layer alive forever
}

const at::Tensor& TrainableTokensLayer::delta(const std::string& adapter) const {
  const at::Tensor* tensor = parameters_of(*home_.container).find(adapter);
  TORCH_INTERNAL_ASSERT(tensor, "adapter '", adapter, "' has no ", kDelta, " on '", module_name(), "'");
  return *tensor;
}

at::Tensor TrainableTokensLayer::with_rows(at::Tensor weight, const std::vector<const Record*>& adapters) const {
  for (const Record* adapter : adapters) {
    const at::Tensor& rows = delta(adapter->name);
    weight = weight.index_copy(0, adapter->index.to(weight.device()), rows.to(weight.device(), weight.scalar_type()));
  }
  return weight;
}

at::Tensor TrainableTokensLayer::forward(torch::nn::Module& base, const at::Tensor& input, BaseForward base_forward) {
  const std::shared_ptr<const AdapterSnapshot> state = snapshot();
  if (state->bypass()) return base_forward(input);
  if (sample_routing()) {
    throw ConfigError("Per-sample adapters (AdapterNamesPerSample) are supported for LoRA only, not " + peft_type() + ".");
  }
  std::vector<const Record*> active;
  for (const auto& record : state->active) active.push_back(static_cast<const Record*>(record.get()));
  if (const std::string bad = overlapping_adapter(active); !bad.empty()) throw ConfigError(overlap_message(bad));
  const at::Tensor weight = with_rows(used_weight(base_layer()), active);
  if (kind() == LayerKind::Embedding) {
    const auto& options = dynamic_cast<const torch::nn::EmbeddingImpl&>(base).options;
    return torch::nn::functional::detail::embedding(input, weight, options.padding_idx(), options.max_norm(),
                                                    options.norm_type(), options.scale_grad_by_freq(),
                                                    options.sparse());
  }
  return at::linear(input, weight);  // a Linear with a bias is never adapted (see prepare_trainable_tokens)
}

void TrainableTokensLayer::add(std::shared_ptr<const Record> record, const at::Tensor& delta,
                               const at::Tensor& original, std::shared_ptr<const PeftConfig> config) {
  if (!tied()) {
    home_.container->insert(record->name, delta);
    originals_->set(record->name, original);
  }
  add_adapter(std::move(record), std::move(config));
}

bool TrainableTokensLayer::is_wrapper(const std::string& adapter) const {
  auto it = records_.find(adapter);
  return it != records_.end() && static_cast<const Record&>(*it->second).wrapper;
}

std::string TrainableTokensLayer::checkpoint_submodule(const std::string& adapter) const {
  return is_wrapper(adapter) ? "token_adapter" : "";
}

bool TrainableTokensLayer::tensors_held_elsewhere(const std::string& adapter) const {
  return tied() && is_wrapper(adapter);
}

void TrainableTokensLayer::remove_adapter(torch::nn::Module&, const std::string& name) {
  if (!tied()) {
    if (home_.container->contains(name)) home_.container->pop(name);
    originals_->erase(name);
  }
  remove_adapter_record(name);
}

/// A prepared merge: the rows the owner writes and those they overwrite; a tied layer only records it.
class PendingTokensMerge final : public PendingChange {
 public:
  TrainableTokensLayer* layer = nullptr;
  std::vector<std::string> names;
  std::vector<at::Tensor> index, rows, originals;  // per name (empty for a tied layer)

  void commit() override {
    at::NoGradGuard no_grad;
    if (!rows.empty()) {
      // In place, so every tensor sharing the weight's storage (a tied head) sees the merge; on the
      // variable's data, as Python's `.data`, so no autograd version check trips over it.
      at::Tensor weight = used_weight(layer->base_layer()).variable_data();
      for (size_t i = 0; i < rows.size(); ++i) weight.index_copy_(0, index[i], rows[i]);
    }
    for (size_t i = 0; i < originals.size(); ++i) layer->originals_->set(names[i], originals[i]);
    std::lock_guard<std::mutex> lock(layer->mutex_);
    for (const auto& name : names) layer->merged_.push_back(name);
    layer->publish();
  }
};

std::unique_ptr<PendingChange> TrainableTokensLayer::prepare_merge(torch::nn::Module&,
                                                                   const std::vector<std::string>& names,
                                                                   bool safe_merge) {
  std::vector<std::shared_ptr<const AdapterRecord>> keep;  // the records stay alive while used below
  std::vector<const Record*> merged, fresh;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto record_of = [&](const std::string& name) -> const Record* {
      auto it = records_.find(name);
      if (it == records_.end()) return nullptr;
      keep.push_back(it->second);
      return static_cast<const Record*>(it->second.get());
    };
    for (const std::string& name : merged_) {
      if (const Record* r = record_of(name)) merged.push_back(r);
    }
    for (const std::string& name : names) {
      const bool done = std::find(merged_.begin(), merged_.end(), name) != merged_.end() ||
                        std::any_of(fresh.begin(), fresh.end(), [&](const Record* r) { return r->name == name; });
      if (done) continue;
      if (const Record* r = record_of(name)) fresh.push_back(r);
    }
  }
  if (fresh.empty()) return nullptr;
  // Merged adapters first, so that the adapter named is one being merged now (as in Python).
  std::vector<const Record*> all = merged;
  all.insert(all.end(), fresh.begin(), fresh.end());
  if (const std::string bad = overlapping_adapter(all); !bad.empty()) throw MergeError(overlap_message(bad));

  auto pending = std::make_unique<PendingTokensMerge>();
  pending->layer = this;
  for (const Record* r : fresh) pending->names.push_back(r->name);
  if (tied()) return pending;  // the owner writes the shared weight

  const at::Tensor weight = used_weight(base_layer());
  if (!weight.defined() || weight.device().is_meta()) {
    throw MergeError("Cannot merge into a layer whose weight is on the meta device.");
  }
  at::NoGradGuard no_grad;
  at::Tensor merged_weight = safe_merge ? weight.detach() : at::Tensor();  // only to check, as Python does
  for (const Record* r : fresh) {
    if (delta(r->name).device().is_meta()) {
      throw MergeError("Cannot merge adapter '" + r->name + "' into '" + module_name() + "': its " + kDelta +
                       " is still on the meta device (injected with low_cpu_mem_usage and never loaded).");
    }
    const at::Tensor index = r->index.to(weight.device());
    // The rows the merge overwrites, taken now: what unmerge must put back, whatever the weight held at
    // injection (Python keeps the delta's initial values, which are random with init_weights=false).
    // The adapters' rows are disjoint, so each reads the weight as it is before the merge.
    pending->originals.push_back(weight.detach().index_select(0, index));
    pending->rows.push_back(delta(r->name).detach().to(weight.device(), weight.scalar_type(), false, /*copy=*/true));
    pending->index.push_back(index);
    if (safe_merge) {
      merged_weight = merged_weight.index_copy(0, index, pending->rows.back());
      if (!at::isfinite(merged_weight).all().item<bool>()) {
        throw MergeError("NaNs detected in the merged weights. The adapter " + r->name + " seems to be broken");
      }
    }
  }
  return pending;
}

void TrainableTokensLayer::unmerge(torch::nn::Module&) {
  at::NoGradGuard no_grad;
  std::lock_guard<std::mutex> lock(mutex_);
  if (merged_.empty()) return;
  if (tied()) {
    merged_.clear();  // the owner restores the shared weight
    publish();
    return;
  }
  at::Tensor weight = used_weight(base_layer()).variable_data();
  while (!merged_.empty()) {
    const std::string name = merged_.back();
    merged_.pop_back();
    auto it = records_.find(name);
    const at::Tensor* original = originals_->find(name);
    if (it == records_.end() || !original) continue;
    const auto& record = static_cast<const Record&>(*it->second);
    weight.index_copy_(0, record.index.to(weight.device()), original->to(weight.device(), weight.scalar_type()));
  }
  publish();
}

TiedGroup find_tied_group(const std::vector<std::pair<std::string, torch::nn::Module*>>& layers) {
  auto last_component = [](const std::string& name) { return name.substr(name.rfind('.') + 1); };
  std::vector<std::pair<const std::string*, at::Tensor>> embeddings, rows;
  for (const auto& [name, module] : layers) {
    const std::optional<BaseLayer> layer = describe_layer(*module);
    if (!layer || (layer->kind != LayerKind::Embedding && layer->kind != LayerKind::Linear)) continue;
    rows.emplace_back(&name, used_weight(*layer));
    if (layer->kind == LayerKind::Embedding) embeddings.emplace_back(&name, rows.back().second);
  }
  std::stable_sort(embeddings.begin(), embeddings.end(), [&](const auto& a, const auto& b) {
    return last_component(*a.first) == "embed_tokens" && last_component(*b.first) != "embed_tokens";
  });
  for (const auto& [name, weight] : embeddings) {
    TiedGroup group;
    for (const auto& [other, other_weight] : rows) {
      if (other != name && same_weight(other_weight, weight)) group.tied.push_back(*other);
    }
    if (group.tied.empty()) continue;
    group.embedding = *name;
    return group;
  }
  return {};
}

DeltaHome own_deltas(const LayerRequest& request) {
  if (const auto* layer = dynamic_cast<const TrainableTokensLayer*>(request.existing)) {
    return DeltaHome{layer->home().container, false, ""};
  }
  return DeltaHome{std::make_shared<ParameterDictImpl>(), false, ""};
}

namespace {

class PendingTokens final : public PendingChange {
 public:
  torch::nn::Module* base = nullptr;
  TrainableTokensLayer* existing = nullptr;
  std::shared_ptr<TrainableTokensLayer> fresh;  // when the layer has no trainable tokens yet
  std::shared_ptr<const Record> record;
  at::Tensor delta, original;  // undefined for a tied layer
  std::vector<int64_t> shape;
  std::shared_ptr<const PeftConfig> config;

  std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_shapes() const override {
    if (record->wrapper && !delta.defined()) return {};  // a tied wrapper: its owner's delta is the saved one
    return {{kDelta, shape}};
  }

  void commit() override {
    if (fresh) {
      fresh->attach(*base, fresh);
      existing = fresh.get();
    }
    existing->add(record, delta, original, config);
  }
};

std::string joined(const std::vector<std::string>& names) {
  std::string out = "[";
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", '" : "'") + names[i] + "'";
  return out + "]";
}

// A layer that already has trainable tokens keeps the role it has: its own deltas, or those of one owner.
void check_role(const TrainableTokensLayer& existing, const std::string& name, const DeltaHome& home) {
  const DeltaHome& had = existing.home();
  if (had.tied && !home.tied) {
    throw ConfigError("'" + name + "' shares its weight with '" + had.owner + "' and uses its trainable tokens; add "
                      "trainable tokens by targeting '" + had.owner + "' (they reach '" + name + "' as well).");
  }
  if (!had.tied && home.tied) {
    throw ConfigError("'" + name + "' shares its weight with '" + home.owner + "', so it would use the trainable "
                      "tokens of '" + home.owner + "', but it has trainable tokens of its own (adapters " +
                      joined(existing.adapter_names()) + "). Delete those first, or leave '" + home.owner +
                      "' out of target_modules.");
  }
  if (had.tied && had.container != home.container) {
    throw ConfigError("'" + name + "' uses the trainable tokens of '" + had.owner + "', so it cannot use those of '" +
                      home.owner + "' too.");
  }
}

}  // namespace

std::unique_ptr<PendingChange> prepare_trainable_tokens(const LayerRequest& request, const Method& method,
                                                        const TokenRows& rows, const DeltaHome& home) {
  const BaseLayer& base = request.base;
  const std::string& name = request.module_name;
  if (base.kind != LayerKind::Embedding && base.kind != LayerKind::Linear) {
    throw UnsupportedLayerError("Target module " + short_repr(*base.module) + " ('" + name + "') is not supported "
                                "by trainable tokens: they replace rows of an Embedding or a Linear weight.");
  }
  if (base.kind == LayerKind::Linear && base.bias().defined()) {
    throw UnsupportedLayerError(
        "Target module " + short_repr(*base.module) + " ('" + name + "') is not supported: trainable tokens adapt "
        "a Linear only without a bias (an lm_head has none). Python PEFT's TrainableTokensLayer leaves the bias out "
        "of the adapted output (F.linear without bias) but keeps it once merged, which peft-cpp does not copy.");
  }
  const at::Tensor weight = used_weight(base);
  const int64_t count = weight.size(0), dim = weight.size(1);
  std::unordered_set<int64_t> seen;
  for (int64_t row : rows.indices) {
    if (row < 0 || row >= count) {
      throw ConfigError("token_indices: " + std::to_string(row) + " is not a row of '" + name + "', whose weight has " +
                        std::to_string(count) + (base.kind == LayerKind::Embedding ? " tokens." : " output features."));
    }
    if (!seen.insert(row).second) {
      throw ConfigError("token_indices lists " + std::to_string(row) + " more than once.");
    }
  }

  auto pending = std::make_unique<PendingTokens>();
  if (request.existing) {
    pending->existing = dynamic_cast<TrainableTokensLayer*>(request.existing);
    TORCH_INTERNAL_ASSERT(pending->existing, "layer '", name, "' carries another kind of adapter layer");
    check_role(*pending->existing, name, home);
  } else {
    check_container_names_free(*base.module, name, {kDelta, kOriginal});
    pending->fresh = std::make_shared<TrainableTokensLayer>(request, method, home);
  }
  auto record = std::make_shared<Record>(request.adapter_name);
  record->indices = rows.indices;
  record->wrapper = rows.wrapper;
  record->index = at::tensor(rows.indices, at::kLong);
  const int64_t k = static_cast<int64_t>(rows.indices.size());
  if (!home.tied) {
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    const bool real_weight = !weight.device().is_meta();
    at::NoGradGuard no_grad;
    const at::Tensor base_rows = real_weight ? weight.detach().index_select(0, record->index.to(weight.device()))
                                             : at::empty({k, dim}, weight.options());
    if (!materialised(options)) {
      pending->delta = at::empty({k, dim}, options);
    } else if (rows.init_weights) {
      pending->delta = base_rows.to(options, /*non_blocking=*/false, /*copy=*/true);
    } else {
      pending->delta = at::randn({k, dim}, options);
    }
    pending->original = base_rows;
  }
  pending->base = base.module;
  pending->record = std::move(record);
  pending->shape = {k, dim};
  pending->config = request.config;
  return pending;
}

}  // namespace peft::detail::trainable_tokens
