// TrainableTokens' registration: Python PEFT's TrainableTokensConfig fields and the layers it adapts.

#include <unordered_set>

#include <peft/error.h>

#include "tuners/trainable_tokens/builder.h"

namespace peft::detail::trainable_tokens {
namespace {

class TrainableTokens final : public MethodOf<TrainableTokensConfig> {
 public:
  TrainableTokens() : MethodOf("trainable_tokens_") {
    // Python's layer handles any module with a weight but computes only for nn.Embedding and nn.Linear.
    layers({LayerKind::Embedding, LayerKind::Linear});
    without_common_fields({"exclude_modules", "modules_to_save", "layers_to_transform", "layers_pattern"});
    custom(
        "token_indices",
        [](JsonConfigReader& in, TrainableTokensConfig& config) {
          config.token_indices(in.get_int_or_list("token_indices").value_or(std::vector<int64_t>{}));
        },
        [](const TrainableTokensConfig& config) { return nlohmann::json(config.token_indices()); });
    field(PEFT_FIELD(init_weights));
  }

  // Python's _prepare_adapter_config: the input embedding, "embed_tokens" for a model without
  // get_input_embeddings (a LibTorch model has none).
  TargetModules default_target_modules() const override { return TargetModules::regex("embed_tokens"); }

  bool uses_trainable_tokens(const PeftConfig&) const override { return true; }

  std::unique_ptr<AdapterBuilder> start(TrainableTokensConfig& config) const override {
    return make_builder(*this, config);
  }

 protected:
  void check(const TrainableTokensConfig& config) const override {
    std::unordered_set<int64_t> seen;
    for (int64_t row : config.token_indices()) {
      if (row < 0) throw ConfigError("token_indices: " + std::to_string(row) + " is negative; token ids start at 0.");
      if (!seen.insert(row).second) {
        throw ConfigError("token_indices lists " + std::to_string(row) + " more than once.");
      }
    }
  }
};

}  // namespace
}  // namespace peft::detail::trainable_tokens

PEFT_REGISTER_METHOD(trainable_tokens, peft::detail::trainable_tokens::TrainableTokens)
