#include "tuners/lora/config_json.h"

namespace peft::detail::lora {

void read_unused_lora_fields(JsonConfigReader& in) {
  // Python fields that only matter for features peft-cpp does not have: accepted when off.
  in.accept_only_neutral("megatron_config", "Megatron parallel layers are not supported");
  in.accept_only_neutral("trainable_token_indices", "trainable tokens are not supported yet");
  in.accept_only_neutral("layer_replication", "layer replication is not supported");
  in.accept_only_neutral("alora_invocation_tokens", "aLoRA is not supported");
  in.accept_only_neutral("use_qalora", "QA-LoRA is not supported");
  in.accept_only_neutral("velora_config", "VeLoRA is not supported");
  in.accept_only_neutral("monteclora_config", "MonteCLoRA is not supported");
  in.accept_only_neutral("use_bdlora", "BD-LoRA is not supported");
  in.accept_only_neutral("arrow_config", "Arrow routing is not supported");
  in.accept_only_neutral("kasa_config", "KaSA is not supported");
  in.accept_only_neutral("ensure_weight_tying", "tying adapters across tied embeddings is not supported");
  in.accept_only_neutral("loftq_config", "LoftQ is not supported");
  // Settings of init methods and integrations that do not change what a loaded adapter computes.
  for (const char* key : {"megatron_core", "qalora_group_size", "eva_config", "corda_config", "lora_ga_config",
                          "runtime_config"}) {
    in.ignore(key);
  }
}

void write_unused_lora_fields(nlohmann::json& out) {
  using nlohmann::json;
  for (const char* key : {"megatron_config", "trainable_token_indices", "layer_replication", "alora_invocation_tokens",
                          "velora_config", "monteclora_config", "use_bdlora", "arrow_config", "kasa_config",
                          "eva_config", "corda_config", "lora_ga_config"}) {
    out[key] = nullptr;
  }
  out["megatron_core"] = "megatron.core";
  out["loftq_config"] = json::object();
  out["use_qalora"] = false;
  out["qalora_group_size"] = 16;
  out["ensure_weight_tying"] = false;
}

}  // namespace peft::detail::lora
