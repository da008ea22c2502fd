#include <peft/tuners/miss/config.h>

#include <peft/error.h>

#include "tuners/common/config_checks.h"

namespace peft {

void MissConfig::validate() const {
  PeftConfig::validate();
  detail::check_positive("r", r_);
  detail::check_positive("mini_r", mini_r_);
  detail::check_probability("miss_dropout", miss_dropout_);
  const std::string& m = init_weights_.method();
  if (!init_weights_.is_bool() && m != "bat" && m != "mini") {
    throw ConfigError("Unknown init_weights: " + m + " (MiSS accepts true, false, \"bat\" or \"mini\")");
  }
  detail::check_bias(bias_, "MiSS_only");
}

}  // namespace peft
