// One TrainableTokens injection: which layers share a weight (and so one delta), then each layer's change.

#include "tuners/trainable_tokens/builder.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "tuners/common/pending_adapter.h"
#include "tuners/trainable_tokens/layer.h"

namespace peft::detail::trainable_tokens {
namespace {

bool has_rows(LayerKind kind) { return kind == LayerKind::Embedding || kind == LayerKind::Linear; }

class TokensBuilder final : public BuilderOf<const TrainableTokensConfig> {
 public:
  using BuilderOf::BuilderOf;

  // Python ties the layers named by the model's `_tied_weights_keys` to the input embedding. A LibTorch model
  // ties by sharing the tensor, so every Embedding or Linear using a targeted embedding's weight is tied.
  std::vector<std::string> tied_layers(const std::vector<LayerRequest>& targets,
                                       const std::vector<std::pair<std::string, torch::nn::Module*>>& layers) override {
    std::vector<std::string> out;
    std::unordered_set<const torch::nn::Module*> adapted;
    for (const LayerRequest& target : targets) adapted.insert(target.base.module);
    for (const LayerRequest& target : targets) {
      if (target.base.kind != LayerKind::Embedding) continue;
      const at::Tensor weight = used_weight(target.base);
      for (const auto& [name, module] : layers) {
        if (adapted.count(module)) continue;
        const std::optional<BaseLayer> layer = describe_layer(*module);
        if (layer && has_rows(layer->kind) && same_weight(used_weight(*layer), weight)) {
          out.push_back(name);
          adapted.insert(module);
        }
      }
    }
    return out;
  }

  // Layers sharing one weight share one delta: the first embedding among them owns it (Python ties to the
  // input embedding), or else the first layer.
  void plan(const std::vector<LayerRequest>& requests) override {
    std::vector<const LayerRequest*> order;
    for (const LayerRequest& r : requests) {
      if (r.base.kind == LayerKind::Embedding) order.push_back(&r);
    }
    for (const LayerRequest& r : requests) {
      if (r.base.kind != LayerKind::Embedding) order.push_back(&r);
    }
    std::vector<const LayerRequest*> owners;
    for (const LayerRequest* request : order) {
      const at::Tensor weight = used_weight(request->base);
      auto owner = std::find_if(owners.begin(), owners.end(),
                                [&](const LayerRequest* o) { return same_weight(used_weight(o->base), weight); });
      if (owner == owners.end()) {
        homes_[request->base.module] = own_deltas(*request);
        owners.push_back(request);
        continue;
      }
      DeltaHome home = homes_.at((*owner)->base.module);
      home.tied = true;
      home.owner = (*owner)->module_name;
      homes_[request->base.module] = home;
    }
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const TokenRows rows{config_.token_indices(), config_.init_weights()};
    return prepare_trainable_tokens(request, method_, rows, homes_.at(request.base.module));
  }

 private:
  std::unordered_map<const torch::nn::Module*, DeltaHome> homes_;
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const TrainableTokensConfig& config) {
  return std::make_unique<TokensBuilder>(method, config);
}

}  // namespace peft::detail::trainable_tokens
