#include <peft/tuners/c3a/config.h>

#include <peft/error.h>

#include "tuners/common/config_checks.h"

namespace peft {

void C3AConfig::validate() const {
  PeftConfig::validate();
  if (exclude_modules_.is_set()) {
    throw ConfigError("C3AConfig has no exclude_modules in Python PEFT; narrow target_modules instead.");
  }
  detail::check_positive("block_size", block_size_);
  detail::check_positive_pattern("block_size_pattern", block_size_pattern_);
  const std::string& m = init_weights_.method();
  if (!init_weights_.is_bool() && m != "gaussian" && m != "kaiming_uniform" && m != "xavier_uniform") {
    throw ConfigError("Unknown init_weights: " + m + " (C3A accepts true, false, \"gaussian\", \"kaiming_uniform\" or "
                      "\"xavier_uniform\")");
  }
  detail::check_bias(bias_, "c3a_only");
}

}  // namespace peft
