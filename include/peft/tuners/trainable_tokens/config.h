#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// TrainableTokens: trains only some rows (tokens) of an embedding matrix. The adapter keeps the new values
/// of those rows (`trainable_tokens_delta`, one row per index) and puts them in place of the base rows;
/// merging writes them into the weight. Targets `Embedding` layers, and `Linear` layers without a bias
/// (their rows are output units, e.g. an untied lm_head). A `Linear` or `Embedding` whose weight is the
/// targeted embedding's own tensor (an lm_head tied to the input embedding) is adapted along with it and uses
/// the same delta. With target_modules unset, the layer named "embed_tokens" (at the top level) is targeted,
/// as Python PEFT does for a model without `get_input_embeddings`.
class PEFT_API TrainableTokensConfig : public MethodConfig<TrainableTokensConfig> {
 public:
  std::string peft_type() const override { return "TRAINABLE_TOKENS"; }

  /// The rows to train (token ids), each in [0, number of rows), no repeats. The closer their number is to the
  /// vocabulary size, the less this saves over training the whole matrix.
  TORCH_ARG(std::vector<int64_t>, token_indices);
  /// true: the delta starts as the current rows (a no-op until trained); false: random normal values. Leave
  /// it true unless you know why not.
  TORCH_ARG(bool, init_weights) = true;
};

}  // namespace peft
