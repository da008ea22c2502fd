#pragma once

// A method's config fields, declared once: each entry names a field of adapter_config.json, the config
// member it lives in (through the TORCH_ARG accessor, whose initialiser is the default), and its checks.
// The one table drives reading adapter_config.json, writing it, and validate().
//
//   field(PEFT_FIELD(r)).check(positive());
//   field(PEFT_FIELD(lora_alpha)).python_int();            // Python declares it int: 16.0 is written as 16
//   unsupported("use_qalora", "QA-LoRA is not supported"); // accepted only when neutral, written as false

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include <peft/config.h>

#include "core/json_config.h"

/// The JSON name and accessor of a TORCH_ARG config field: field(PEFT_FIELD(r)).
#define PEFT_FIELD(name) #name, [](auto& config) -> auto& { return config.name(); }

namespace peft::detail {

class ConfigField {
 public:
  explicit ConfigField(std::string name) : name_(std::move(name)) {}
  virtual ~ConfigField() = default;
  const std::string& name() const { return name_; }
  virtual void read(JsonConfigReader& in, PeftConfig& config) const = 0;
  virtual void write(const PeftConfig& config, nlohmann::json& out) const = 0;
  virtual void check(const PeftConfig& config) const {}
  /// The value as JSON (what write() puts under name()).
  nlohmann::json value(const PeftConfig& config) const {
    nlohmann::json out = nlohmann::json::object();
    write(config, out);
    return out.contains(name_) ? out[name_] : nlohmann::json();
  }

 private:
  std::string name_;
};

// How each C++ field type is read from and written to adapter_config.json.
template <class T>
struct JsonCodec;
template <>
struct JsonCodec<bool> {
  static bool read(JsonConfigReader& in, const std::string& key, const bool& fallback) { return in.get_bool(key, fallback); }
  static nlohmann::json write(bool v) { return v; }
};
template <>
struct JsonCodec<int64_t> {
  static int64_t read(JsonConfigReader& in, const std::string& key, const int64_t& fallback) { return in.get_int(key, fallback); }
  static nlohmann::json write(int64_t v) { return v; }
};
template <>
struct JsonCodec<double> {
  static double read(JsonConfigReader& in, const std::string& key, const double& fallback) { return in.get_number(key, fallback); }
  static nlohmann::json write(double v) { return v; }
};
template <>
struct JsonCodec<std::string> {
  static std::string read(JsonConfigReader& in, const std::string& key, const std::string& fallback) {
    return in.get_string(key, fallback);
  }
  static nlohmann::json write(const std::string& v) { return v; }
};
template <>
struct JsonCodec<std::optional<int64_t>> {
  static std::optional<int64_t> read(JsonConfigReader& in, const std::string& key, const std::optional<int64_t>& fallback) {
    if (!in.raw(key)) return in.has(key) ? std::nullopt : fallback;
    return in.get_int(key, 0);
  }
  static nlohmann::json write(const std::optional<int64_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); }
};
template <>
struct JsonCodec<std::optional<std::vector<std::string>>> {
  static std::optional<std::vector<std::string>> read(JsonConfigReader& in, const std::string& key,
                                                      const std::optional<std::vector<std::string>>&) {
    return in.get_string_list(key);
  }
  static nlohmann::json write(const std::optional<std::vector<std::string>>& v) {
    return v ? nlohmann::json(*v) : nlohmann::json();
  }
};
template <>
struct JsonCodec<InitWeights> {
  static InitWeights read(JsonConfigReader& in, const std::string& key, const InitWeights& fallback) {
    return in.get_init(key, fallback);
  }
  static nlohmann::json write(const InitWeights& v) { return init_to_json(v); }
};
template <>
struct JsonCodec<TargetModules> {
  static TargetModules read(JsonConfigReader& in, const std::string& key, const TargetModules&) { return in.get_targets(key); }
  static nlohmann::json write(const TargetModules& v) { return targets_to_json(v); }
};
template <>
struct JsonCodec<PatternMap<int64_t>> {
  static PatternMap<int64_t> read(JsonConfigReader& in, const std::string& key, const PatternMap<int64_t>&) {
    return in.get_int_map(key);
  }
  static nlohmann::json write(const PatternMap<int64_t>& v) { return pattern_to_json(v); }
};
template <>
struct JsonCodec<PatternMap<double>> {
  static PatternMap<double> read(JsonConfigReader& in, const std::string& key, const PatternMap<double>&) {
    return in.get_number_map(key);
  }
  static nlohmann::json write(const PatternMap<double>& v) { return pattern_to_json(v); }
};

/// A field of config type `Config` holding a `T`, reached through `Access` (a PEFT_FIELD accessor).
template <class Config, class T, class Access>
class Field final : public ConfigField {
 public:
  using Check = std::function<void(const std::string& name, const T& value)>;

  Field(std::string name, Access access) : ConfigField(std::move(name)), access_(std::move(access)) {}

  /// A check the value must pass (throws ConfigError); several may be added.
  Field& check(Check check) {
    checks_.push_back(std::move(check));
    return *this;
  }
  /// Python declares the field an int although it is a float here (LoRA's lora_alpha): integral values are
  /// written as JSON integers, as Python writes them.
  Field& python_int() {
    static_assert(std::is_same_v<T, double>, "python_int() is for float fields");
    python_int_ = true;
    return *this;
  }

  const T& get(const PeftConfig& config) const { return access_(static_cast<const Config&>(config)); }

  void read(JsonConfigReader& in, PeftConfig& config) const override {
    T& slot = access_(static_cast<Config&>(config));
    slot = JsonCodec<T>::read(in, name(), slot);
  }
  void write(const PeftConfig& config, nlohmann::json& out) const override {
    if constexpr (std::is_same_v<T, double>) {
      if (python_int_) {
        out[name()] = number_to_json(get(config));
        return;
      }
    }
    out[name()] = JsonCodec<T>::write(get(config));
  }
  void check(const PeftConfig& config) const override {
    for (const auto& c : checks_) c(name(), get(config));
  }

 private:
  Access access_;
  std::vector<Check> checks_;
  bool python_int_ = false;
};

/// A field of Python's config that peft-cpp reads and writes but cannot use: accepted when neutral (null,
/// false, empty, or its Python default) and rejected with `why` otherwise; written as the Python default.
class UnsupportedField final : public ConfigField {
 public:
  UnsupportedField(std::string name, std::string why, nlohmann::json python_default)
      : ConfigField(std::move(name)), why_(std::move(why)), default_(std::move(python_default)) {}
  void read(JsonConfigReader& in, PeftConfig&) const override { in.accept_only_neutral(name(), why_, default_); }
  void write(const PeftConfig&, nlohmann::json& out) const override { out[name()] = default_; }

 private:
  std::string why_;
  nlohmann::json default_;
};

/// A field whose value does not change what peft-cpp computes (init settings, integrations): its value in a
/// file is ignored; written as the Python default (or not at all).
class IgnoredField final : public ConfigField {
 public:
  IgnoredField(std::string name, std::optional<nlohmann::json> python_default)
      : ConfigField(std::move(name)), default_(std::move(python_default)) {}
  void read(JsonConfigReader& in, PeftConfig&) const override { in.ignore(name()); }
  void write(const PeftConfig&, nlohmann::json& out) const override {
    if (default_) out[name()] = *default_;
  }

 private:
  std::optional<nlohmann::json> default_;
};

/// A field with its own JSON form (AdaLoRA's rank_pattern).
template <class Config>
class CustomField final : public ConfigField {
 public:
  using Read = std::function<void(JsonConfigReader&, Config&)>;
  using Write = std::function<nlohmann::json(const Config&)>;
  CustomField(std::string name, Read read, Write write)
      : ConfigField(std::move(name)), read_(std::move(read)), write_(std::move(write)) {}
  void read(JsonConfigReader& in, PeftConfig& config) const override { read_(in, static_cast<Config&>(config)); }
  void write(const PeftConfig& config, nlohmann::json& out) const override {
    out[name()] = write_(static_cast<const Config&>(config));
  }

 private:
  Read read_;
  Write write_;
};

// Checks shared by the methods' fields.

/// At least one (Python's "`r` should be a positive integer value but the value passed is 0").
std::function<void(const std::string&, const int64_t&)> positive();
/// Zero or more.
std::function<void(const std::string&, const int64_t&)> not_negative();
/// In [0, 1].
std::function<void(const std::string&, const double&)> probability();
/// In [0, 1).
std::function<void(const std::string&, const double&)> probability_below_one();
/// "none", "all" or "<method>_only".
std::function<void(const std::string&, const std::string&)> bias_choice(std::string method_only);
/// true, false or one of these method names.
std::function<void(const std::string&, const InitWeights&)> init_choice(std::vector<std::string> methods);
/// Every value of a per-module pattern at least one.
std::function<void(const std::string&, const PatternMap<int64_t>&)> positive_values();

}  // namespace peft::detail
