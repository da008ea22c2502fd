#pragma once

// adapter_config.json: reading with per-field type checks and a record of the fields nobody read (so
// unknown fields can be reported once), and writing in Python PEFT's layout.

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <peft/config.h>

namespace peft::detail {

/// The peft_version this library writes.
extern const char* const kPeftVersion;

class JsonConfigReader;

/// Access to PeftConfig's shared fields for the JSON reader/writer.
struct ConfigFields {
  static void read_common(JsonConfigReader& reader, PeftConfig& config);
  static void write_common(const PeftConfig& config, nlohmann::json& out);
  static void set_target_modules(PeftConfig& config, TargetModules targets) {
    config.target_modules_ = std::move(targets);
  }
  static void set_inference_mode(PeftConfig& config, bool value) { config.inference_mode_ = value; }
};

class JsonConfigReader {
 public:
  JsonConfigReader(const nlohmann::json& object, std::string source);

  const std::string& source() const { return source_; }
  bool has(const std::string& key) const;

  bool get_bool(const std::string& key, bool fallback);
  int64_t get_int(const std::string& key, int64_t fallback);
  double get_number(const std::string& key, double fallback);
  std::string get_string(const std::string& key, const std::string& fallback);
  std::optional<std::string> get_optional_string(const std::string& key);
  /// null | list of strings | string (a regex, or "all-linear").
  TargetModules get_targets(const std::string& key);
  std::optional<std::vector<std::string>> get_string_list(const std::string& key);
  /// null | string | list of strings.
  std::optional<std::vector<std::string>> get_string_or_list(const std::string& key);
  /// null | int | list of ints.
  std::optional<std::vector<int64_t>> get_int_or_list(const std::string& key);
  /// true | false | a method name.
  InitWeights get_init(const std::string& key, const InitWeights& fallback);
  PatternMap<int64_t> get_int_map(const std::string& key);
  PatternMap<double> get_number_map(const std::string& key);
  /// The raw value (marks the key as read), or nullptr.
  const nlohmann::json* raw(const std::string& key);

  /// A field Python PEFT writes that peft-cpp does not use: accepted when it is null, false, empty or equal
  /// to `neutral`; any other value is rejected because ignoring it would compute something else.
  void accept_only_neutral(const std::string& key, const std::string& why, const nlohmann::json& neutral = nullptr);
  /// A field whose value does not change what peft-cpp computes.
  void ignore(const std::string& key);

  /// Keys present in the object that no getter consumed.
  std::vector<std::string> unread_keys() const;

  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

 private:
  const nlohmann::json* lookup(const std::string& key);
  template <class T>
  PatternMap<T> get_map(const std::string& key, const char* what,
                        const std::function<std::optional<T>(const nlohmann::json&)>& convert);

  const nlohmann::json& object_;
  std::string source_;
  std::set<std::string> read_;
};

nlohmann::json targets_to_json(const TargetModules& targets);
nlohmann::json init_to_json(const InitWeights& init);
/// An integral value as a JSON integer (Python writes ints for what it was given as ints).
nlohmann::json number_to_json(double value);
template <class T>
nlohmann::json pattern_to_json(const PatternMap<T>& patterns) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [key, value] : patterns) out[key] = number_to_json(static_cast<double>(value));
  return out;
}

/// Parses adapter_config.json text; `source` names it in messages.
std::shared_ptr<PeftConfig> parse_config(const std::string& json_text, const std::string& source);

}  // namespace peft::detail
