#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// `init_lora_weights`: true (A kaiming-uniform, B zero: the adapter starts as a no-op), false (both keep
/// LibTorch's default Linear init: a random adapter, useful in tests), or the name of an init method:
/// "gaussian", "orthogonal", "pissa", "olora", "eva", "lora_ga".
using InitLoraWeights = InitWeights;

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
};

}  // namespace peft
