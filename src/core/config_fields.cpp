#include "core/config_fields.h"

#include <algorithm>

#include <peft/error.h>

namespace peft::detail {

std::function<void(const std::string&, const int64_t&)> positive() {
  return [](const std::string& name, const int64_t& value) {
    if (value <= 0) {
      throw ConfigError("`" + name + "` should be a positive integer value but the value passed is " +
                        std::to_string(value));
    }
  };
}

std::function<void(const std::string&, const int64_t&)> not_negative() {
  return [](const std::string& name, const int64_t& value) {
    if (value < 0) throw ConfigError("`" + name + "` must not be negative, got " + std::to_string(value));
  };
}

std::function<void(const std::string&, const double&)> probability() {
  return [](const std::string& name, const double& value) {
    if (!(value >= 0 && value <= 1)) throw ConfigError("`" + name + "` must be in [0, 1], got " + std::to_string(value));
  };
}

std::function<void(const std::string&, const double&)> probability_below_one() {
  return [](const std::string& name, const double& value) {
    if (!(value >= 0 && value < 1)) throw ConfigError("`" + name + "` must be in [0, 1), got " + std::to_string(value));
  };
}

std::function<void(const std::string&, const std::string&)> bias_choice(std::string method_only) {
  return [method_only](const std::string&, const std::string& bias) {
    if (bias != "none" && bias != "all" && bias != method_only) {
      throw ConfigError("Requested bias: " + bias + ", is not implemented. Use \"none\", \"all\" or \"" + method_only +
                        "\".");
    }
  };
}

std::function<void(const std::string&, const InitWeights&)> init_choice(std::vector<std::string> methods) {
  return [methods](const std::string& name, const InitWeights& init) {
    if (init.is_bool() || std::find(methods.begin(), methods.end(), init.method()) != methods.end()) return;
    std::string accepted = "true, false";
    for (size_t i = 0; i < methods.size(); ++i) accepted += (i + 1 == methods.size() ? " or \"" : ", \"") + methods[i] + "\"";
    throw ConfigError("Unknown " + name + ": \"" + init.method() + "\" (accepted: " + accepted + ")");
  };
}

std::function<void(const std::string&, const PatternMap<int64_t>&)> positive_values() {
  return [](const std::string& name, const PatternMap<int64_t>& pattern) {
    for (const auto& [key, value] : pattern) {
      if (value <= 0) {
        throw ConfigError("`" + name + "['" + key + "']` should be a positive integer value but the value passed is " +
                          std::to_string(value));
      }
    }
  };
}

}  // namespace peft::detail
