#include "core/json_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include <c10/util/Exception.h>

#include <peft/error.h>

#include "core/method.h"

namespace peft::detail {

// The Python PEFT version whose file format this library reads and writes, and this library. Python PEFT
// parses the part before "@" as a version (OFT's config does), so it must stay a valid version number.
const char* const kPeftVersion = "0.20.1.dev0@peft-cpp-0.1.0";

namespace {

using json = nlohmann::json;

std::string describe(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

// A JSON number with an integral value that fits int64 (Python writes some integers as 8.0), else nullopt.
// Converting an out-of-range double or uint64 would be undefined or wrap into a plausible-looking value.
std::optional<int64_t> integral_value(const json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    constexpr double kLimit = 9223372036854775808.0;  // 2^63, exactly representable
    if (std::isfinite(d) && d >= -kLimit && d < kLimit && std::trunc(d) == d) return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

// Python PEFT's prompt-learning methods: they are not injected into layers.
bool is_prompt_learning(const std::string& peft_type) {
  return peft_type == "PROMPT_TUNING" || peft_type == "P_TUNING" || peft_type == "PREFIX_TUNING" ||
         peft_type == "MULTITASK_PROMPT_TUNING" || peft_type == "ADAPTION_PROMPT" || peft_type == "CPT";
}

}  // namespace

JsonConfigReader::JsonConfigReader(const json& object, std::string source) : object_(object), source_(std::move(source)) {}

bool JsonConfigReader::has(const std::string& key) const { return object_.contains(key); }

const json* JsonConfigReader::lookup(const std::string& key) {
  read_.insert(key);
  auto it = object_.find(key);
  if (it == object_.end() || it->is_null()) return nullptr;
  return &*it;
}

void JsonConfigReader::fail(const std::string& key, const std::string& message) const {
  throw ConfigError(source_ + ": field '" + key + "' " + message);
}

bool JsonConfigReader::get_bool(const std::string& key, bool fallback) {
  const json* v = lookup(key);
  if (!v) return fallback;
  if (!v->is_boolean()) fail(key, "must be true or false, got " + describe(*v));
  return v->get<bool>();
}

int64_t JsonConfigReader::get_int(const std::string& key, int64_t fallback) {
  const json* v = lookup(key);
  if (!v) return fallback;
  if (const std::optional<int64_t> value = integral_value(*v)) return *value;
  fail(key, "must be an integer (at most 2^63 - 1 in magnitude), got " + describe(*v));
}

double JsonConfigReader::get_number(const std::string& key, double fallback) {
  const json* v = lookup(key);
  if (!v) return fallback;
  if (!v->is_number()) fail(key, "must be a number, got " + describe(*v));
  return v->get<double>();
}

std::string JsonConfigReader::get_string(const std::string& key, const std::string& fallback) {
  const json* v = lookup(key);
  if (!v) return fallback;
  if (!v->is_string()) fail(key, "must be a string, got " + describe(*v));
  return v->get<std::string>();
}

std::optional<std::string> JsonConfigReader::get_optional_string(const std::string& key) {
  const json* v = lookup(key);
  if (!v) return std::nullopt;
  if (!v->is_string()) fail(key, "must be a string or null, got " + describe(*v));
  return v->get<std::string>();
}

std::optional<std::vector<std::string>> JsonConfigReader::get_string_list(const std::string& key) {
  const json* v = lookup(key);
  if (!v) return std::nullopt;
  if (!v->is_array()) fail(key, "must be a list of strings or null, got " + describe(*v));
  std::vector<std::string> out;
  for (const json& item : *v) {
    if (!item.is_string()) fail(key, "must be a list of strings, got an element " + describe(item));
    out.push_back(item.get<std::string>());
  }
  return out;
}

std::optional<std::vector<std::string>> JsonConfigReader::get_string_or_list(const std::string& key) {
  const json* v = lookup(key);
  if (!v) return std::nullopt;
  if (v->is_string()) return std::vector<std::string>{v->get<std::string>()};
  read_.erase(key);
  return get_string_list(key);
}

std::optional<std::vector<int64_t>> JsonConfigReader::get_int_or_list(const std::string& key) {
  const json* v = lookup(key);
  if (!v) return std::nullopt;
  if (v->is_number()) {
    if (const std::optional<int64_t> value = integral_value(*v)) return std::vector<int64_t>{*value};
  }
  if (!v->is_array()) fail(key, "must be an integer, a list of integers or null, got " + describe(*v));
  std::vector<int64_t> out;
  for (const json& item : *v) {
    const std::optional<int64_t> value = integral_value(item);
    if (!value) fail(key, "must be a list of integers, got an element " + describe(item));
    out.push_back(*value);
  }
  return out;
}

TargetModules JsonConfigReader::get_targets(const std::string& key) {
  const json* v = lookup(key);
  if (!v) return {};
  if (v->is_string()) {
    std::string text = v->get<std::string>();
    std::string lower = text;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower == "all-linear") return TargetModules::all_linear();
    return TargetModules::regex(std::move(text));
  }
  if (!v->is_array()) fail(key, "must be a list of module names, a regex string or null, got " + describe(*v));
  std::vector<std::string> names;
  for (const json& item : *v) {
    if (!item.is_string()) fail(key, "must be a list of strings, got an element " + describe(item));
    names.push_back(item.get<std::string>());
  }
  return TargetModules(std::move(names));
}

InitWeights JsonConfigReader::get_init(const std::string& key, const InitWeights& fallback) {
  const json* v = lookup(key);
  if (!v) return fallback;
  if (v->is_boolean()) return InitWeights(v->get<bool>());
  if (v->is_string()) return InitWeights(v->get<std::string>());
  fail(key, "must be true, false or a method name, got " + describe(*v));
}

// nlohmann::json keeps object keys sorted; Python keeps insertion order. Both orders agree whenever at most
// one key matches a module, which is how these patterns are meant to be written.
template <class T>
PatternMap<T> JsonConfigReader::get_map(const std::string& key, const char* what,
                                        const std::function<std::optional<T>(const json&)>& convert) {
  const json* v = lookup(key);
  PatternMap<T> out;
  if (!v) return out;
  if (!v->is_object()) fail(key, std::string("must be an object mapping patterns to ") + what + "s, got " + describe(*v));
  for (auto it = v->begin(); it != v->end(); ++it) {
    const std::optional<T> value = convert(it.value());
    if (!value) fail(key, "value for '" + it.key() + "' must be a " + what + ", got " + describe(it.value()));
    out.emplace_back(it.key(), *value);
  }
  return out;
}

PatternMap<int64_t> JsonConfigReader::get_int_map(const std::string& key) {
  return get_map<int64_t>(key, "integer", integral_value);
}

PatternMap<double> JsonConfigReader::get_number_map(const std::string& key) {
  return get_map<double>(key, "number", [](const json& v) -> std::optional<double> {
    return v.is_number() ? std::optional<double>(v.get<double>()) : std::nullopt;
  });
}

const json* JsonConfigReader::raw(const std::string& key) { return lookup(key); }

void JsonConfigReader::accept_only_neutral(const std::string& key, const std::string& why, const json& neutral) {
  const json* v = lookup(key);
  if (!v) return;
  const bool is_neutral = (v->is_boolean() && !v->get<bool>()) || (v->is_object() && v->empty()) ||
                          (v->is_array() && v->empty()) || (!neutral.is_null() && *v == neutral);
  if (!is_neutral) fail(key, "is " + describe(*v) + ", which peft-cpp cannot honour: " + why);
}

void JsonConfigReader::ignore(const std::string& key) { read_.insert(key); }

std::vector<std::string> JsonConfigReader::unread_keys() const {
  std::vector<std::string> out;
  for (auto it = object_.begin(); it != object_.end(); ++it) {
    if (!read_.count(it.key())) out.push_back(it.key());
  }
  return out;
}

json targets_to_json(const TargetModules& targets) {
  switch (targets.kind()) {
    case TargetModules::Kind::Unset: return nullptr;
    case TargetModules::Kind::Regex: return targets.pattern();
    case TargetModules::Kind::AllLinear: return "all-linear";
    case TargetModules::Kind::Names: {
      // Python writes its set as a list in hash order; sorted is the reproducible equivalent.
      std::vector<std::string> names = targets.names();
      std::sort(names.begin(), names.end());
      return names;
    }
  }
  return nullptr;
}

json init_to_json(const InitWeights& init) { return init.is_bool() ? json(init.enabled()) : json(init.method()); }

json number_to_json(double value) {
  if (std::isfinite(value) && value == std::floor(value) && std::fabs(value) < 1e15) return static_cast<int64_t>(value);
  return value;
}

void ConfigFields::read_common(JsonConfigReader& reader, PeftConfig& config) {
  config.target_modules_ = reader.get_targets("target_modules");
  config.exclude_modules_ = reader.get_targets("exclude_modules");
  config.modules_to_save_ = reader.get_string_list("modules_to_save");
  config.layers_to_transform_ = reader.get_int_or_list("layers_to_transform");
  config.layers_pattern_ = reader.get_string_or_list("layers_pattern");
  config.inference_mode_ = reader.get_bool("inference_mode", false);
  config.task_type_ = reader.get_optional_string("task_type");
  config.base_model_name_or_path_ = reader.get_optional_string("base_model_name_or_path");
  config.revision_ = reader.get_optional_string("revision");
  reader.ignore("peft_type");
  config.peft_version_ = reader.get_optional_string("peft_version");
  if (const json* mapping = reader.raw("auto_mapping")) config.auto_mapping_json_ = mapping->dump();
}

void ConfigFields::write_common(const PeftConfig& config, json& out) {
  out["peft_type"] = config.peft_type();
  out["task_type"] = config.task_type_ ? json(*config.task_type_) : json(nullptr);
  out["base_model_name_or_path"] = config.base_model_name_or_path_ ? json(*config.base_model_name_or_path_) : json(nullptr);
  out["revision"] = config.revision_ ? json(*config.revision_) : json(nullptr);
  out["inference_mode"] = config.inference_mode_;
  out["auto_mapping"] = json::parse(config.auto_mapping_json_);
  out["peft_version"] = kPeftVersion;
  out["target_modules"] = targets_to_json(config.target_modules_);
  out["exclude_modules"] = targets_to_json(config.exclude_modules_);
  out["modules_to_save"] = config.modules_to_save_ ? json(*config.modules_to_save_) : json(nullptr);
  out["layers_to_transform"] = config.layers_to_transform_ ? json(*config.layers_to_transform_) : json(nullptr);
  if (config.layers_pattern_ && config.layers_pattern_->size() == 1) {
    out["layers_pattern"] = config.layers_pattern_->front();
  } else {
    out["layers_pattern"] = config.layers_pattern_ ? json(*config.layers_pattern_) : json(nullptr);
  }
}

}  // namespace peft::detail

namespace peft {

std::shared_ptr<PeftConfig> detail::parse_config(const std::string& json_text, const std::string& source) {
  using detail::json;
  json object;
  try {
    object = json::parse(json_text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for numbers that do not fit
    throw FileFormatError(source + ": not valid JSON (" + e.what() + ")");
  }
  if (!object.is_object()) throw FileFormatError(source + ": expected a JSON object at the top level");
  auto type_it = object.find("peft_type");
  if (type_it == object.end() || !type_it->is_string()) {
    throw ConfigError(source + ": missing the string field 'peft_type' (e.g. \"LORA\")");
  }
  const std::string peft_type = type_it->get<std::string>();
  if (detail::is_prompt_learning(peft_type)) {
    throw ConfigError(source + ": peft_type " + peft_type +
                      " is a prompt-learning method; `create_and_replace` does not support prompt learning and "
                      "adaption prompt yet.");
  }
  const detail::Method* method = detail::find_method(peft_type);
  if (!method) {
    std::string known;
    for (const auto& name : supported_peft_types()) known += (known.empty() ? "" : ", ") + name;
    throw ConfigError(source + ": peft_type '" + peft_type + "' is not supported by peft-cpp (supported: " + known + ")");
  }
  detail::JsonConfigReader reader(object, source);
  std::shared_ptr<PeftConfig> config = method->new_config();
  method->read_config(reader, *config);
  detail::ConfigFields::read_common(reader, *config);
  const std::vector<std::string> unknown = reader.unread_keys();
  if (!unknown.empty()) {
    std::string names;
    for (const auto& name : unknown) names += (names.empty() ? "" : ", ") + name;
    TORCH_WARN(source, ": ignoring fields peft-cpp does not know: ", names);
  }
  config->validate();
  return config;
}

std::shared_ptr<PeftConfig> config_from_json_string(const std::string& json_text) {
  return detail::parse_config(json_text, "adapter config");
}

std::shared_ptr<PeftConfig> load_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileFormatError("cannot open adapter config '" + path + "'");
  std::ostringstream text;
  text << in.rdbuf();
  return detail::parse_config(text.str(), path);
}

std::string PeftConfig::to_json_string() const {
  nlohmann::json out = nlohmann::json::object();
  detail::ConfigFields::write_common(*this, out);
  detail::require_method(peft_type()).write_config(*this, out);
  // nlohmann::json objects are ordered by key: json.dumps(indent=2, sort_keys=True) with ASCII escapes.
  return out.dump(2, ' ', /*ensure_ascii=*/true);
}

}  // namespace peft
