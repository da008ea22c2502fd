#pragma once

// How an X-LoRA forward reaches the LoRA layers: while XLoraModel runs a pass, a thread-local Mixing names the
// model's LoRA layers (with their X-LoRA layer numbers) and the scalings to mix their experts with. A LoRA layer
// that finds itself there mixes (tuners/xlora/layer.cpp) instead of adding its active adapters.

#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "core/adapter_layer.h"

namespace peft::detail::lora {
class LoraLayer;
}  // namespace peft::detail::lora

namespace peft::detail::xlora {

/// What an X-LoRA model fixes when it is made.
struct Numbering {
  std::unordered_map<const AdapterLayer*, int64_t> layer_numbers;  // X-LoRA's numbering of the LoRA layers
  std::vector<std::string> experts;                                // adapter name of expert i ("0", "1", ...)
};

/// One pass.
struct Mixing {
  const Numbering* numbering = nullptr;
  at::Tensor scalings;  // (batch, seq, n_layers, n_experts): the classifier's, or the scaling pass's constant
  std::optional<int64_t> top_k;
  bool softmax_top_k = false;
  double global_scaling_weight = 1.0;
};

/// The calling thread's mixing, or nullptr.
const Mixing* current_mixing();

/// Installs `mixing` for the calling thread while alive (guards nest).
class MixingScope {
 public:
  explicit MixingScope(const Mixing& mixing);
  ~MixingScope();
  MixingScope(const MixingScope&) = delete;
  MixingScope& operator=(const MixingScope&) = delete;

 private:
  const Mixing* previous_;
};

/// The LoRA layer's output with its experts mixed per token (Python's XLoraLinearLayer / XLoraEmbeddingLayer /
/// XLoraConv2dLayer forward).
at::Tensor mixed_forward(lora::LoraLayer& layer, torch::nn::Module& base, const at::Tensor& x,
                         BaseForward base_forward, const AdapterSnapshot& state, const Mixing& mixing,
                         int64_t layer_number);

}  // namespace peft::detail::xlora
