#pragma once

// Merging an adapter into a base model's weights without the model: from the base checkpoint's tensors
// (all of them, or one shard) and the adapter's checkpoint, as Python PEFT's merge_and_unload would give.

#include <string>
#include <vector>

#include <peft/adapter_info.h>
#include <peft/config.h>
#include <peft/export.h>
#include <peft/state_dict.h>

namespace peft {

struct OfflineMergeResult {
  /// New values for base tensors, keyed and typed like them: merged weights (and biases the method changes),
  /// plus the adapter's replacement tensors whose keys are in `base`.
  StateDict tensors;
  /// Adapted modules whose "<module>.weight" is not in `base` (in another shard, or not in this model).
  std::vector<std::string> modules_not_in_base;
};

struct OfflineMergeOptions {
  /// W' = W + scale * (merged(W) - W), which is W + scale * dW for additive methods.
  double scale = 1.0;
  /// Let the merge write into float32 base tensors instead of copies (saves a copy of every merged weight;
  /// `base`'s tensors then hold merged values too). Tensors of other dtypes are always converted copies.
  bool in_place = false;
};

/// Merges `adapter` (checkpoint keys, with or without "base_model.model.") into `base` (state-dict keys). Each
/// adapted module becomes a stand-in layer (Linear; Embedding for lora_embedding_* / oft_embedding_R keys;
/// peft::LinearLike when config.fan_in_fan_out; Conv1d/2d/3d from the weight's rank; LayerNorm for 1-d weights),
/// the adapter is injected and loaded into those, and merged with the method's own merge. The math runs in
/// float32; results keep the base tensors' dtypes. Throws peft::Error for adapters that do not fit the tensors.
PEFT_API OfflineMergeResult merge_into_weights(const PeftConfig& config, const StateDict& adapter, const StateDict& base,
                                      const OfflineMergeOptions& options = {});

}  // namespace peft
