#pragma once

#include <cstdint>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// HiRA, Hadamard High-Rank Adaptation (https://openreview.net/pdf?id=TwJrTz9cRS): the update is the base
/// weight times, entry by entry, a low-rank product, W' = W0 + W0 * (B A), so its rank is not bounded by r.
/// Targets Linear, Embedding, Conv1d/2d/3d (not grouped) and peft::LinearLike layers. A merge keeps a copy of
/// the weight from before the first merge (as Python does): later merges scale by it, and unmerging restores it.
class PEFT_API HiraConfig : public MethodConfig<HiraConfig> {
 public:
  std::string peft_type() const override { return "HIRA"; }

  /// The rank of A and B.
  TORCH_ARG(int64_t, r) = 32;
  /// Dropout probability on the adapter's input (Linear and Conv layers).
  TORCH_ARG(double, hira_dropout) = 0.0;
  /// The layer stores its weight as (in, out) (GPT-2's Conv1D). As in Python, the layer decides (with a warning
  /// where the flag disagrees) and the config keeps the value given.
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// true: A kaiming-uniform, B zeros (a no-op start); "gaussian": A ~ N(0, 1/r^2) on Linear layers (as true
  /// elsewhere); false: A and B standard normal. Embeddings start with A zeros and B standard normal unless false.
  TORCH_ARG(InitWeights, init_weights) = true;
  /// Per-module ranks, keys matched like LoRA's rank_pattern. As in Python PEFT, only used for an adapter added
  /// to a layer that already carries a HiRA adapter: a layer's first HiRA adapter has rank r.
  TORCH_ARG(PatternMap<int64_t>, rank_pattern);
};

}  // namespace peft
