#pragma once

// What LoRA and AdaLoRA (whose Python config derives from LoraConfig) share in their registration.

#include "core/method.h"

namespace peft::detail {

template <class Config>
class LoraFamilyMethod : public MethodOf<Config> {
 protected:
  using MethodOf<Config>::MethodOf;

  /// LoraConfig fields of Python PEFT for features peft-cpp does not have (Megatron, LoftQ, ...): a
  /// file may carry them only with their neutral values; they are written with Python's defaults.
  /// `lora_itself`: LoRA's own registration, which handles trainable_token_indices and ensure_weight_tying.
  void python_only_lora_fields(bool lora_itself = false) {
    this->unsupported("megatron_config", "Megatron parallel layers are not supported");
    if (!lora_itself) this->unsupported("trainable_token_indices", "trainable tokens are not supported yet");
    if (!lora_itself) this->unsupported("layer_replication", "layer replication is not supported");
    if (!lora_itself) this->unsupported("alora_invocation_tokens", "aLoRA is only available for LoRA");
    this->unsupported("use_qalora", "QA-LoRA is not supported", false);
    this->unsupported("velora_config", "VeLoRA is not supported");
    this->unsupported("monteclora_config", "MonteCLoRA is not supported");
    if (!lora_itself) this->unsupported("use_bdlora", "BD-LoRA is only available for LoRA");
    if (!lora_itself) this->unsupported("arrow_config", "Arrow routing is only available for LoRA");
    this->unsupported("kasa_config", "KaSA is not supported");
    if (!lora_itself) {
      this->unsupported("ensure_weight_tying", "tying adapters across tied embeddings is not supported", false);
    }
    this->unsupported("loftq_config", "LoftQ is not supported", nlohmann::json::object());
    // Settings of init methods and integrations that do not change what a loaded adapter computes.
    this->ignored("megatron_core", "megatron.core");
    this->ignored("qalora_group_size", 16);
    for (const char* name : {"eva_config", "corda_config", "lora_ga_config"}) this->ignored(name);
    this->ignored("runtime_config", std::nullopt);
  }
};

}  // namespace peft::detail
