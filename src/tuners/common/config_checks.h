#pragma once

// Validation shared by the method configs.

#include <cstdint>
#include <string>

#include <peft/config.h>

namespace peft::detail {

/// `bias` must be "none", "all" or "<something>_only" (Python PEFT's accepted forms).
void check_bias(const std::string& bias, const char* method_only);
/// A count that must be at least one; names the field in the message.
void check_positive(const char* field, int64_t value);
/// A probability in [0, 1].
void check_probability(const char* field, double value);
/// For methods whose Python config has no layers_to_transform / layers_pattern.
void check_no_layer_selection(const PeftConfig& config, const char* config_name);
/// Every value of a per-module pattern must be positive.
void check_positive_pattern(const char* field, const PatternMap<int64_t>& pattern);

}  // namespace peft::detail
