#pragma once

// Which modules a config selects: Python PEFT's check_target_module_exists and get_pattern_key, ported
// with their quirks (see tests/test_matching.cpp), with every pattern compiled once per injection.

#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include <peft/config.h>

#include "core/python_regex.h"

namespace peft::detail {

enum class MatchResult { NoMatch, Match, Excluded };

class TargetMatcher {
 public:
  explicit TargetMatcher(const PeftConfig& config);
  MatchResult match(const std::string& module_name) const;

 private:
  bool excluded(const std::string& key) const;
  bool layer_index_allows(const std::string& key) const;

  std::optional<PythonRegex> exclude_regex_;
  std::unordered_set<std::string> exclude_names_;
  std::vector<std::string> exclude_suffixes_;
  std::vector<PythonRegex> modules_to_save_;
  TargetModules::Kind target_kind_;
  std::optional<PythonRegex> target_regex_;
  std::unordered_set<std::string> target_names_;
  std::vector<std::string> target_suffixes_;
  std::optional<std::vector<int64_t>> layer_indexes_;
  std::vector<PythonRegex> layer_index_patterns_;
};

/// rank_pattern / alpha_pattern: the value of the first key K for which the module name matches
/// (.*\.)?(K)$ from its start, or `fallback`.
template <class T>
class PatternLookup {
 public:
  PatternLookup(const PatternMap<T>& patterns, const std::string& what) {
    for (const auto& [key, value] : patterns) {
      entries_.emplace_back(PythonRegex("(.*\\.)?(" + key + ")$", PythonRegex::Anchor::Start, what), value);
    }
  }
  T lookup(const std::string& module_name, T fallback) const {
    for (const auto& [regex, value] : entries_) {
      if (regex.matches(module_name)) return value;
    }
    return fallback;
  }

 private:
  std::vector<std::pair<PythonRegex, T>> entries_;
};

/// Python PEFT's modules_to_save selection: the module name ends with an entry (no "." required).
bool matches_modules_to_save(const std::vector<std::string>& modules_to_save, const std::string& module_name);

}  // namespace peft::detail
