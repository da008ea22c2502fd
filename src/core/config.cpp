#include <peft/config.h>

#include <algorithm>
#include <ostream>

#include <peft/error.h>

#include "core/method.h"

namespace peft {
namespace {

std::vector<std::string> unique_in_order(std::vector<std::string> names) {
  std::vector<std::string> out;
  for (auto& name : names) {
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(std::move(name));
  }
  return out;
}

}  // namespace

TargetModules::TargetModules(std::initializer_list<std::string> names)
    : TargetModules(std::vector<std::string>(names)) {}

TargetModules::TargetModules(std::vector<std::string> names)
    : kind_(Kind::Names), names_(unique_in_order(std::move(names))) {}

TargetModules TargetModules::regex(std::string pattern) {
  TargetModules t;
  t.kind_ = Kind::Regex;
  t.pattern_ = std::move(pattern);
  return t;
}

TargetModules TargetModules::all_linear() {
  TargetModules t;
  t.kind_ = Kind::AllLinear;
  return t;
}

bool TargetModules::operator==(const TargetModules& other) const {
  if (kind_ != other.kind_) return false;
  if (kind_ == Kind::Regex) return pattern_ == other.pattern_;
  if (kind_ != Kind::Names) return true;
  std::vector<std::string> a = names_, b = other.names_;
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  return a == b;
}

std::ostream& operator<<(std::ostream& os, const TargetModules& targets) {
  switch (targets.kind()) {
    case TargetModules::Kind::Unset: return os << "None";
    case TargetModules::Kind::Regex: return os << targets.pattern();
    case TargetModules::Kind::AllLinear: return os << "all-linear";
    case TargetModules::Kind::Names: break;
  }
  std::vector<std::string> names = targets.names();
  std::sort(names.begin(), names.end());
  os << "{";
  for (size_t i = 0; i < names.size(); ++i) os << (i ? ", " : "") << "'" << names[i] << "'";
  return os << "}";
}

void PeftConfig::validate() const {
  if (target_modules_.is_regex() && layers_to_transform_) {
    throw ConfigError("`layers_to_transform` cannot be used when `target_modules` is a str.");
  }
  if (target_modules_.is_regex() && layers_pattern_ && !layers_pattern_->empty()) {
    throw ConfigError("`layers_pattern` cannot be used when `target_modules` is a str.");
  }
  const bool has_layers_pattern =
      layers_pattern_ && std::any_of(layers_pattern_->begin(), layers_pattern_->end(), [](const auto& p) { return !p.empty(); });
  if (has_layers_pattern && !layers_to_transform_) {
    throw ConfigError("When `layers_pattern` is specified, `layers_to_transform` must also be specified. ");
  }
  detail::require_method(peft_type()).validate(*this);
}

std::string PeftConfig::bias_mode() const { return detail::require_method(peft_type()).bias_mode(*this); }

std::vector<std::string> supported_peft_types() {
  std::vector<std::string> names;
  for (const detail::Method* method : detail::all_methods()) names.push_back(method->peft_type());
  return names;
}

std::ostream& operator<<(std::ostream& os, const PeftConfig& config) {
  std::string type = config.peft_type();
  return os << "peft config " << type << " " << config.to_json_string();
}

}  // namespace peft
