#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <peft/export.h>
#include <peft/module_ref.h>

namespace peft {

/// How add_weighted_adapter combines the adapters (Python PEFT's arguments of the same names).
struct WeightedAdapterOptions {
  /// "svd", "linear", "cat", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
  /// "magnitude_prune" or "magnitude_prune_svd". With one adapter, always "linear" (as in Python).
  std::string combination_type = "svd";
  /// The new adapter's rank for the *svd types (default: the largest of the adapters').
  std::optional<int64_t> svd_rank;
  /// A quantile in [0, 1] at which the SVD factors are clamped (*svd types).
  std::optional<double> svd_clamp;
  bool svd_full_matrices = true;
  /// The fraction of values kept, in [0, 1]: needed by ties, dare_* and magnitude_prune (and their *svd forms).
  std::optional<double> density;
  /// "total" or "frequency": how ties and dare_ties elect each value's sign.
  std::string majority_sign_method = "total";
};

/// Python PEFT's LoraModel.add_weighted_adapter: a new LoRA adapter `adapter_name` made from the model's LoRA adapters
/// `adapters` with `weights` (negative weights subtract), on the union of their layers. Its config is the first
/// adapter's with r and lora_alpha set to the new rank (the shared rank for linear/ties/dare_*/magnitude_prune, the sum
/// for cat, svd_rank or the largest for the *svd types) and no rank/alpha patterns. The new adapter is frozen and not
/// activated (set_adapter it). dare_* draw their random masks from LibTorch's default generator, as Python does (same
/// seed, same masks). Everything is checked before the model changes; an existing `adapter_name`, DoRA adapters and
/// layers the method cannot combine are refused.
PEFT_API void add_weighted_adapter(ModuleRef model, const std::vector<std::string>& adapters,
                                   const std::vector<double>& weights, const std::string& adapter_name,
                                   const WeightedAdapterOptions& options = {});

}  // namespace peft
