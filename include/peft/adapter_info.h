#pragma once

// What an adapter checkpoint holds, read without a model (peft-cpp inspect and merge use these).

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <peft/config.h>
#include <peft/export.h>
#include <peft/state_dict.h>

namespace peft {

/// The base-model modules an adapter checkpoint adapts: "<module>" of every "<module>.<method prefix>..." key
/// (e.g. "model.layers.0.self_attn.q_proj" from "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
/// sorted and without duplicates.
PEFT_API std::vector<std::string> adapted_module_names(const PeftConfig& config, const StateDict& adapter);

/// The adapter's other tensors (modules_to_save copies, trained biases), by the base-model key each replaces
/// ("lm_head.weight"; "lin0.base_layer.bias" -> "lin0.bias"). Trainable tokens are not among them.
PEFT_API StateDict replaced_base_tensors(const PeftConfig& config, const StateDict& adapter);

/// The layers whose rows the adapter trains beside its method (LoRA's trainable_token_indices, saved as Python's
/// "<layer>.token_adapter.trainable_tokens_delta"), with the number of rows each; sorted.
PEFT_API std::vector<std::pair<std::string, int64_t>> trainable_token_layers(const PeftConfig& config,
                                                                            const StateDict& adapter);

/// One adapted module as the checkpoint and its config describe it.
struct AdaptedModuleInfo {
  std::string name;
  /// The rank the checkpoint's tensors have (methods with a single rank: LoRA, AdaLoRA, LoHa, ...).
  std::optional<int64_t> rank;
  /// The rank the config gives this module (r, or its rank_pattern entry), where the method has one.
  std::optional<int64_t> config_rank;
  /// The alpha the config gives this module (alpha / lora_alpha, or its alpha_pattern entry).
  std::optional<double> alpha;
  /// Inconsistencies: tensors that disagree about the rank, or a rank the config does not give.
  std::vector<std::string> problems;
};

/// Every adapted module of an adapter checkpoint (adapted_module_names order), with rank and alpha.
PEFT_API std::vector<AdaptedModuleInfo> describe_adapted_modules(const PeftConfig& config, const StateDict& adapter);

}  // namespace peft
