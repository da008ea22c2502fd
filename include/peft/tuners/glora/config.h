#pragma once

#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// GLoRA (Generalized LoRA): a targeted Linear computes with W0 + W0 * A + B and b0 + b0 * D + E + W0 @ C.
/// Each of A/B, C and D/E is parameterised as "lora" (Xd @ Xu of rank r), "vector" (one value per row),
/// "constant" (one scalar) or "none" (zeros, saved as a `zeros` buffer as in Python). C, D and E need a bias:
/// on a layer without one they are "none". Targets Linear layers.
class PEFT_API GloraConfig : public MethodConfig<GloraConfig> {
 public:
  std::string peft_type() const override { return "GLORA"; }

  /// The rank of the "lora" paths.
  TORCH_ARG(int64_t, r) = 8;
  /// "none", "all" or "glora_only": which biases are trained and saved with the adapter.
  TORCH_ARG(std::string, bias) = "none";
  /// A and B (W0 * A + B): "lora", "vector", "constant" or "none".
  TORCH_ARG(std::string, config_A_B) = "lora";
  /// C (W0 @ C added to the bias): "lora", "vector" or "none".
  TORCH_ARG(std::string, config_C) = "lora";
  /// D and E (b0 * D + E): "vector", "constant" or "none".
  TORCH_ARG(std::string, config_D_E) = "constant";
  /// true: the paths start at zero (a no-op); false: Kaiming-uniform (constants: normal with std 0.02).
  TORCH_ARG(bool, init_weights) = true;
};

}  // namespace peft
