#pragma once

#include <initializer_list>
#include <iosfwd>
#include <string>
#include <vector>

#include <peft/export.h>

namespace peft {

/// Which modules an adapter config selects, with Python PEFT's meaning:
/// - a list of names: a module matches when its full name equals an entry or ends with "." + entry;
/// - a regex: the full module name must match it entirely (Python's re.fullmatch);
/// - all_linear(): every Linear-like layer ("all-linear" in adapter_config.json);
/// - unset (default constructed): nothing selected (Python's None).
class PEFT_API TargetModules {
 public:
  enum class Kind { Unset, Names, Regex, AllLinear };

  TargetModules() = default;
  TargetModules(std::initializer_list<std::string> names);
  TargetModules(std::vector<std::string> names);

  static TargetModules regex(std::string pattern);
  static TargetModules all_linear();

  Kind kind() const noexcept { return kind_; }
  bool is_set() const noexcept { return kind_ != Kind::Unset; }
  bool is_names() const noexcept { return kind_ == Kind::Names; }
  bool is_regex() const noexcept { return kind_ == Kind::Regex; }
  bool is_all_linear() const noexcept { return kind_ == Kind::AllLinear; }
  /// The names (Kind::Names), without duplicates, in first-seen order.
  const std::vector<std::string>& names() const noexcept { return names_; }
  /// The pattern (Kind::Regex).
  const std::string& pattern() const noexcept { return pattern_; }

  bool operator==(const TargetModules& other) const;
  bool operator!=(const TargetModules& other) const { return !(*this == other); }

 private:
  Kind kind_ = Kind::Unset;
  std::vector<std::string> names_;
  std::string pattern_;
};

/// Prints like Python PEFT's messages: {'a', 'b'} for names (sorted), the pattern itself for a regex.
PEFT_API std::ostream& operator<<(std::ostream& os, const TargetModules& targets);

}  // namespace peft
