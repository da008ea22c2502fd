#include "core/matching.h"

namespace peft::detail {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

TargetMatcher::TargetMatcher(const PeftConfig& config) : target_kind_(config.target_modules().kind()) {
  const TargetModules& exclude = config.exclude_modules();
  if (exclude.is_regex() && !exclude.pattern().empty()) {
    exclude_regex_.emplace(exclude.pattern(), PythonRegex::Anchor::Full, "exclude_modules");
  } else if (exclude.is_names()) {
    for (const auto& name : exclude.names()) {
      exclude_names_.insert(name);
      exclude_suffixes_.push_back("." + name);
    }
  }
  if (const auto& mts = config.modules_to_save()) {
    // Python: re.match(rf"(^|.*\.){m}($|\..*)", key) with `m` not escaped.
    for (const auto& m : *mts) {
      modules_to_save_.emplace_back("(^|.*\\.)" + m + "($|\\..*)", PythonRegex::Anchor::Start, "modules_to_save");
    }
  }
  const TargetModules& targets = config.target_modules();
  if (targets.is_regex()) {
    target_regex_.emplace(targets.pattern(), PythonRegex::Anchor::Full, "target_modules");
  } else if (targets.is_names()) {
    for (const auto& name : targets.names()) {
      target_names_.insert(name);
      target_suffixes_.push_back("." + name);
    }
  }
  if (config.layers_to_transform() && !config.layers_to_transform()->empty()) {
    layer_indexes_ = config.layers_to_transform();
    const auto& patterns = config.layers_pattern();
    // Python treats an empty layers_pattern ("", [] or None) as "any layer container".
    const bool any_pattern = !patterns || patterns->empty() || (patterns->size() == 1 && patterns->front().empty());
    if (any_pattern) {
      // Lazy .*? takes the first numbered segment (the layer), not a nested one (e.g. an expert index).
      layer_index_patterns_.emplace_back(".*?\\.[^.]*\\.(\\d+)\\.", PythonRegex::Anchor::Start, "layers_to_transform");
    } else {
      for (const auto& p : *patterns) {
        layer_index_patterns_.emplace_back(".*?\\." + p + "\\.(\\d+)\\.", PythonRegex::Anchor::Start, "layers_pattern");
      }
    }
  }
}

bool TargetMatcher::excluded(const std::string& key) const {
  if (exclude_regex_ && exclude_regex_->matches(key)) return true;
  if (exclude_names_.count(key)) return true;
  for (const auto& suffix : exclude_suffixes_) {
    if (ends_with(key, suffix)) return true;
  }
  // Adapters never go on modules_to_save modules: the two would conflict.
  for (const auto& regex : modules_to_save_) {
    if (regex.matches(key)) return true;
  }
  return false;
}

bool TargetMatcher::layer_index_allows(const std::string& key) const {
  std::optional<std::string> index;
  for (const auto& pattern : layer_index_patterns_) {
    index = pattern.group(key, 1);
    if (index) break;
  }
  if (!index) return false;
  const int64_t value = std::stoll(*index);
  for (int64_t allowed : *layer_indexes_) {
    if (allowed == value) return true;
  }
  return false;
}

MatchResult TargetMatcher::match(const std::string& key) const {
  if (excluded(key)) return MatchResult::Excluded;
  switch (target_kind_) {
    case TargetModules::Kind::Unset:
    case TargetModules::Kind::AllLinear:  // expanded to names before matching
      return MatchResult::NoMatch;
    case TargetModules::Kind::Regex:
      return target_regex_->matches(key) ? MatchResult::Match : MatchResult::NoMatch;
    case TargetModules::Kind::Names:
      break;
  }
  // An exact name bypasses layers_to_transform; only the suffix branch checks the layer index.
  if (target_names_.count(key)) return MatchResult::Match;
  bool found = false;
  for (const auto& suffix : target_suffixes_) {
    if (ends_with(key, suffix)) {
      found = true;
      break;
    }
  }
  if (found && layer_indexes_) found = layer_index_allows(key);
  return found ? MatchResult::Match : MatchResult::NoMatch;
}

bool matches_modules_to_save(const std::vector<std::string>& modules_to_save, const std::string& module_name) {
  for (const auto& entry : modules_to_save) {
    if (ends_with(module_name, entry)) return true;
  }
  return false;
}

}  // namespace peft::detail
