#include <peft/tuners/lora/config.h>

#include <peft/error.h>

#include "tuners/lora/init.h"

namespace peft {

void LoraConfig::validate() const {
  PeftConfig::validate();
  if (r_ <= 0) throw ConfigError("`r` should be a positive integer value but the value passed is " + std::to_string(r_));
  for (const auto& [pattern, rank] : rank_pattern_) {
    if (rank <= 0) {
      throw ConfigError("`r` should be a positive integer value but the value passed is " + std::to_string(rank) +
                        " (rank_pattern['" + pattern + "'])");
    }
  }
  if (!(lora_dropout_ >= 0.0 && lora_dropout_ < 1.0)) {
    throw ConfigError("`lora_dropout` must be in [0, 1), got " + std::to_string(lora_dropout_));
  }
  if (bias_ != "none" && bias_ != "all" && bias_ != "lora_only") {
    throw ConfigError("Requested bias: " + bias_ + ", is not implemented. Use \"none\", \"all\" or \"lora_only\".");
  }
  if (!init_lora_weights_.is_bool() && !detail::lora::is_supported_init(init_lora_weights_.method())) {
    throw ConfigError("init_lora_weights='" + init_lora_weights_.method() +
                      "' is not supported by peft-cpp (supported: true, false, \"gaussian\", \"orthogonal\", "
                      "\"pissa\", \"olora\", \"eva\", \"lora_ga\")");
  }
  if (lora_bias_) {
    if (!init_lora_weights_.is_bool()) {
      throw ConfigError("The argument lora_bias=True is only supported with init_lora_weights=True or False, got "
                        "init_lora_weights=" + init_lora_weights_.method() + " instead.");
    }
    if (use_dora_) throw ConfigError("The argument lora_bias=True is not supported for DoRA, please pass use_dora=False");
  }
  if (target_parameters_ && !target_parameters_->empty()) {
    throw ConfigError("`target_parameters` (adapting nn.Parameters directly) is not supported by peft-cpp; "
                      "use `target_modules`.");
  }
}

}  // namespace peft
