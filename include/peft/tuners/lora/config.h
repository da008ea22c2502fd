#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// `init_lora_weights`: true (A kaiming-uniform, B zero: the adapter starts as a no-op), false (both keep
/// LibTorch's default Linear init: a random adapter, useful in tests), or the name of an init method:
/// "gaussian", "orthogonal", "pissa", "olora", "eva", "lora_ga".
using InitLoraWeights = InitWeights;

/// `trainable_token_indices`: token ids of the input embedding, or per layer (module-name suffix) its rows.
using TrainableTokenIndices = std::variant<std::vector<int64_t>, std::map<std::string, std::vector<int64_t>>>;

/// BD-LoRA (Block-Diagonal LoRA, Python PEFT's BdLoraConfig): on each targeted Linear, one factor is block-diagonal
/// with `nblocks` blocks (stored as the blocks stacked: lora_A (r, in / nblocks) or lora_B (out, r / nblocks)), so a
/// row- or column-sharded layer needs no communication when serving many LoRAs. A module whose name contains one of
/// `target_modules_bd_a` gets a block-diagonal lora_A (kaiming-uniform), one of `target_modules_bd_b` a
/// block-diagonal lora_B (zeros); with `match_strict`, every target must match one of them. Linear layers only.
class PEFT_API BdLoraConfig {
 public:
  /// Substrings of module names whose lora_A is block-diagonal (Python's `pattern in target_name`).
  BdLoraConfig& target_modules_bd_a(OptionalList<std::string> value) {
    target_modules_bd_a_ = std::move(value.value);
    return *this;
  }
  const std::optional<std::vector<std::string>>& target_modules_bd_a() const noexcept { return target_modules_bd_a_; }
  /// Substrings of module names whose lora_B is block-diagonal.
  BdLoraConfig& target_modules_bd_b(OptionalList<std::string> value) {
    target_modules_bd_b_ = std::move(value.value);
    return *this;
  }
  const std::optional<std::vector<std::string>>& target_modules_bd_b() const noexcept { return target_modules_bd_b_; }
  /// Blocks of each block-diagonal factor (the sharding degree when serving); must divide r and the layer's sizes.
  TORCH_ARG(int64_t, nblocks) = 1;
  /// Every target must match target_modules_bd_a or target_modules_bd_b (false: the others stay plain LoRA).
  TORCH_ARG(bool, match_strict) = true;

 private:
  std::optional<std::vector<std::string>> target_modules_bd_a_;
  std::optional<std::vector<std::string>> target_modules_bd_b_;
};

/// Arrow routing (https://huggingface.co/papers/2405.11157), with GenKnowSub (https://aclanthology.org/2025.acl-short.54/):
/// Python PEFT's ArrowConfig. The adapter carrying it ("arrow_router", see create_arrow_model in
/// <peft/tuners/lora/arrow.h>) routes each token of a Linear's input through the `top_k` task LoRAs whose prototype
/// (the top right singular vector of B A) is most aligned with it, weighted by softmax(|x . prototype| /
/// router_temperature). With `use_gks`, the mean of the general adapters is first subtracted from every task adapter.
class PEFT_API ArrowConfig {
 public:
  /// The task adapters (create_arrow_model sets task_0, task_1, ...). A layer whose LoRA adapters other than
  /// "arrow_router" and gks_<n> differ from these routes over those instead, as Python's on_adapter_change does.
  ArrowConfig& task_adapter_names(OptionalList<std::string> value) {
    task_adapter_names_ = std::move(value.value);
    return *this;
  }
  const std::optional<std::vector<std::string>>& task_adapter_names() const noexcept { return task_adapter_names_; }
  /// The general adapters averaged by GenKnowSub (create_arrow_model sets gks_0, gks_1, ...).
  ArrowConfig& gks_adapter_names(OptionalList<std::string> value) {
    gks_adapter_names_ = std::move(value.value);
    return *this;
  }
  const std::optional<std::vector<std::string>>& gks_adapter_names() const noexcept { return gks_adapter_names_; }
  /// Task adapters combined per token (at least one).
  TORCH_ARG(int64_t, top_k) = 3;
  /// Softmax temperature of the routing coefficients (above zero).
  TORCH_ARG(double, router_temperature) = 1.0;
  /// GenKnowSub: subtract the general adapters' mean from the task adapters (once, at the first forward).
  TORCH_ARG(bool, use_gks) = false;
  /// Seed of the power iteration's start vector (unset: LibTorch's default generator, not reproducible).
  TORCH_ARG(std::optional<int64_t>, rng_seed);

 private:
  std::optional<std::vector<std::string>> task_adapter_names_;
  std::optional<std::vector<std::string>> gks_adapter_names_;
};

/// LoRA (https://arxiv.org/abs/2106.09685): y = W x + (alpha / r) * B A dropout(x), with A: r x in and
/// B: out x r. Fields and defaults follow Python PEFT's LoraConfig.
class PEFT_API LoraConfig : public MethodConfig<LoraConfig> {
 public:
  std::string peft_type() const override { return "LORA"; }

  /// Rank of the update.
  TORCH_ARG(int64_t, r) = 8;
  /// Scaling numerator: scaling = lora_alpha / r (or / sqrt(r) with use_rslora).
  TORCH_ARG(double, lora_alpha) = 8;
  /// Dropout probability applied to the adapter's input in training mode.
  TORCH_ARG(double, lora_dropout) = 0.0;
  /// The targeted layer stores its weight as (in, out), e.g. GPT-2's Conv1D.
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// "none", "all" or "lora_only": which biases are trained and saved with the adapter.
  TORCH_ARG(std::string, bias) = "none";
  /// Rank-stabilised scaling alpha / sqrt(r).
  TORCH_ARG(bool, use_rslora) = false;
  TORCH_ARG(InitLoraWeights, init_lora_weights) = true;
  /// Per-module ranks: the first key K for which a module name matches (.*\.)?(K)$ wins.
  TORCH_ARG(PatternMap<int64_t>, rank_pattern);
  /// Per-module alphas, matched like rank_pattern.
  TORCH_ARG(PatternMap<double>, alpha_pattern);
  /// DoRA (https://arxiv.org/abs/2402.09353): magnitude/direction decomposition.
  TORCH_ARG(bool, use_dora) = false;
  /// A trainable bias on lora_B.
  TORCH_ARG(bool, lora_bias) = false;
  /// Python PEFT can target nn.Parameters directly; peft-cpp cannot yet, so a set value is rejected.
  TORCH_ARG(std::optional<std::vector<std::string>>, target_parameters);
  /// Arrow routing over task LoRAs (see ArrowConfig); the adapter is made by create_arrow_model.
  TORCH_ARG(std::optional<ArrowConfig>, arrow_config);
  /// Trainable tokens beside the LoRA layers (Python PEFT's TrainableTokensWrapper): rows of embedding (or head)
  /// layers trained and saved as `<layer>.token_adapter.trainable_tokens_delta`. A list gives rows of the input
  /// embedding, the layer named "embed_tokens"; a map gives rows per layer (each key a module-name suffix). A layer
  /// sharing its weight with the embedding (a tied lm_head) uses the embedding's delta when the rows agree (see
  /// ensure_weight_tying).
  TORCH_ARG(std::optional<TrainableTokenIndices>, trainable_token_indices);
  /// Keep layers tied to the input embedding (sharing its weight, as a tied lm_head) tied in the adapter too: their
  /// trainable tokens, modules_to_save copy or LoRA factors are the embedding's. Mismatching rows for tied layers
  /// are then an error instead of separate deltas.
  TORCH_ARG(bool, ensure_weight_tying) = false;
  /// Activated LoRA (aLoRA, https://arxiv.org/abs/2504.12397): the token ids of the invocation sequence. The
  /// adapter then acts only on the tokens from the sequence's last occurrence in each row on; forwards must run in
  /// a peft::AloraScope (<peft/tuners/lora/alora.h>). Linear layers only; cannot be merged.
  TORCH_ARG(std::optional<std::vector<int64_t>>, alora_invocation_tokens);
  /// BD-LoRA: block-diagonal lora_A or lora_B on chosen Linear layers (see BdLoraConfig).
  TORCH_ARG(std::optional<BdLoraConfig>, use_bdlora);

 public:  // (TORCH_ARG leaves the access private)
  /// Layer replication (Python PEFT's replicate_layers): before the adapter is injected, the model's layer list
  /// (found by child names: "model" repeatedly, then "bert", then "layers", "encoder"."layer" or "h"; a
  /// torch::nn::ModuleList of blocks deriving from torch::nn::Cloneable) is rebuilt from [start, end) ranges of its
  /// layers: {{0, 4}, {2, 5}} turns [0..4] into [0, 1, 2, 3, 2, 3, 4]. Repeated layers share the base parameters,
  /// each gets its own adapter. Such a model cannot be merged.
  LoraConfig& layer_replication(OptionalList<std::pair<int64_t, int64_t>> value) {
    layer_replication_ = std::move(value.value);
    return *this;
  }
  const std::optional<std::vector<std::pair<int64_t, int64_t>>>& layer_replication() const noexcept {
    return layer_replication_;
  }

 private:
  std::optional<std::vector<std::pair<int64_t, int64_t>>> layer_replication_;
};

}  // namespace peft
