#pragma once

// Python `re` semantics for the patterns adapter configs contain (target_modules, exclude_modules,
// rank_pattern keys, layers_pattern), on PCRE2: the closest engine to Python's syntax (lookarounds,
// (?P<name>...), \d over Unicode), compiled once per pattern, with a backtracking limit so a hostile
// pattern from a config file cannot hang injection.

#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace peft::detail {

class PythonRegex {
 public:
  enum class Anchor {
    Full,   // re.fullmatch
    Start,  // re.match
    Search, // re.search / re.sub: anywhere in the subject
  };

  /// Throws ConfigError naming `what` (e.g. "target_modules") when the pattern does not compile.
  PythonRegex(const std::string& pattern, Anchor anchor, const std::string& what);

  bool matches(const std::string& subject) const;
  /// Capture group `group` of a match, or nullopt when there is no match (or the group did not take part).
  std::optional<std::string> group(const std::string& subject, int group) const;

  /// Python's re.subn(pattern, replacement, subject) (construct with Anchor::Search): every non-overlapping match
  /// replaced, empty matches handled as Python 3.7+ does (one right after a match is kept, one at the same place
  /// is not), and `replacement` read as Python's template: `\1`..`\99`, `\g<n>`, `\g<name>`, the escapes
  /// \a \b \f \n \r \t \v \\ and octal ones; an unknown letter escape or a group the pattern lacks throws ConfigError
  /// naming `what`. Returns the new string and the number of replacements.
  std::pair<std::string, size_t> subn(const std::string& replacement, const std::string& subject) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Compiled;
  std::string pattern_;
  std::string what_;
  std::shared_ptr<Compiled> compiled_;
};

/// Escapes `text` so it matches literally (Python's re.escape).
std::string regex_escape(const std::string& text);

}  // namespace peft::detail
