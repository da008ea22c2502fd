#include "tuners/common/config_checks.h"

#include <peft/error.h>

namespace peft::detail {

void check_bias(const std::string& bias, const char* method_only) {
  const bool only = bias.size() > 5 && bias.compare(bias.size() - 5, 5, "_only") == 0;
  if (bias != "none" && bias != "all" && !only) {
    throw ConfigError("Requested bias: " + bias + ", is not implemented. Use \"none\", \"all\" or \"" + method_only +
                      "\".");
  }
}

void check_positive(const char* field, int64_t value) {
  if (value <= 0) {
    throw ConfigError(std::string("`") + field + "` should be a positive integer value but the value passed is " +
                      std::to_string(value));
  }
}

void check_probability(const char* field, double value) {
  if (!(value >= 0 && value <= 1)) {
    throw ConfigError(std::string("`") + field + "` must be in [0, 1], got " + std::to_string(value));
  }
}

void check_no_layer_selection(const PeftConfig& config, const char* config_name) {
  if (config.layers_to_transform() || config.layers_pattern()) {
    throw ConfigError(std::string(config_name) +
                      " does not support layers_to_transform / layers_pattern (Python PEFT's config has no such "
                      "fields); select the layers with target_modules instead, e.g. a regex.");
  }
}

void check_positive_pattern(const char* field, const PatternMap<int64_t>& pattern) {
  for (const auto& [key, value] : pattern) {
    if (value <= 0) {
      throw ConfigError(std::string("`") + field + "['" + key + "']` should be a positive integer value but the value "
                        "passed is " + std::to_string(value));
    }
  }
}

}  // namespace peft::detail
