#pragma once

// Python PEFT's TrainableTokensWrapper: trainable tokens another method's adapter brings along (LoRA's
// trainable_token_indices). They are TrainableTokens layers holding the adapter under its own name, saved as
// "<layer>.token_adapter.trainable_tokens_delta"; a layer tied to the input embedding (sharing its weight) uses the
// embedding's delta and saves nothing, as in Python.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/method.h"

namespace peft::detail::trainable_tokens {

struct WrapperRequest {
  /// Rows per layer (a module-name suffix, Python's `key.endswith(name)`).
  std::map<std::string, std::vector<int64_t>> layers;
  /// The config gave a list: the layers map holds "embed_tokens", the input embedding.
  bool from_list = false;
  bool ensure_weight_tying = false;
  std::optional<std::vector<std::string>> modules_to_save;
};

/// Python's set_additional_trainable_modules for trainable_token_indices, without changing the model: one change
/// per wrapped layer. Throws (ConfigError, UnsupportedLayerError) where Python raises, and for a layer the
/// injection adapts with its own method.
std::vector<AuxiliaryChange> prepare_token_wrappers(const AuxiliaryRequest& request, const WrapperRequest& wrappers);

}  // namespace peft::detail::trainable_tokens
