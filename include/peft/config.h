#pragma once

#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <peft/export.h>
#include <peft/target_modules.h>

namespace peft {

namespace detail {
struct ConfigFields;
}  // namespace detail

/// Ordered key -> value patterns (Python dicts keep insertion order, and the first matching key wins).
template <class T>
using PatternMap = std::vector<std::pair<std::string, T>>;

/// An `init_weights`-style field: true, false, or the name of an initialisation method ("gaussian", ...).
class PEFT_API InitWeights {
 public:
  InitWeights(bool value = true) : is_bool_(true), bool_(value) {}  // NOLINT: implicit by design
  InitWeights(const char* method) : is_bool_(false), method_(method) {}  // NOLINT
  InitWeights(std::string method) : is_bool_(false), method_(std::move(method)) {}  // NOLINT

  bool is_bool() const noexcept { return is_bool_; }
  /// The boolean value; for a named method, true (Python treats a non-empty string as truthy).
  bool enabled() const noexcept { return is_bool_ ? bool_ : true; }
  /// The method name ("" for a boolean).
  const std::string& method() const noexcept { return method_; }

  bool operator==(const InitWeights& other) const {
    return is_bool_ == other.is_bool_ && bool_ == other.bool_ && method_ == other.method_;
  }

 private:
  bool is_bool_;
  bool bool_ = true;
  std::string method_;
};

/// Base of every adapter config. Holds the fields all injectable methods share (which modules to adapt,
/// which to train and save whole, inference mode); each method adds its own in a subclass.
class PEFT_API PeftConfig {
 public:
  virtual ~PeftConfig() = default;

  /// Python PEFT's peft_type, e.g. "LORA".
  virtual std::string peft_type() const = 0;
  virtual std::shared_ptr<PeftConfig> clone() const = 0;
  /// Checks what Python PEFT checks when a config is created (every field, and the method's combinations
  /// of fields); throws peft::ConfigError.
  void validate() const;
  /// "none", "all" or "<method>_only": which biases of the model are trained and saved with the adapter.
  std::string bias_mode() const;

  const TargetModules& target_modules() const noexcept { return target_modules_; }
  const TargetModules& exclude_modules() const noexcept { return exclude_modules_; }
  const std::optional<std::vector<std::string>>& modules_to_save() const noexcept { return modules_to_save_; }
  const std::optional<std::vector<int64_t>>& layers_to_transform() const noexcept { return layers_to_transform_; }
  const std::optional<std::vector<std::string>>& layers_pattern() const noexcept { return layers_pattern_; }
  bool inference_mode() const noexcept { return inference_mode_; }
  const std::optional<std::string>& task_type() const noexcept { return task_type_; }
  const std::optional<std::string>& base_model_name_or_path() const noexcept { return base_model_name_or_path_; }
  const std::optional<std::string>& revision() const noexcept { return revision_; }
  /// The peft_version of the file the config was read from (Python PEFT's version, or this library's).
  const std::optional<std::string>& peft_version() const noexcept { return peft_version_; }

  /// The config as Python PEFT's adapter_config.json would hold it (sorted keys, 2-space indent).
  std::string to_json_string() const;

 protected:
  friend struct detail::ConfigFields;

  TargetModules target_modules_;
  TargetModules exclude_modules_;
  std::optional<std::vector<std::string>> modules_to_save_;
  std::optional<std::vector<int64_t>> layers_to_transform_;
  std::optional<std::vector<std::string>> layers_pattern_;
  bool inference_mode_ = false;
  std::optional<std::string> task_type_;
  std::optional<std::string> base_model_name_or_path_;
  std::optional<std::string> revision_;
  std::optional<std::string> peft_version_;
  std::string auto_mapping_json_ = "null";  // kept verbatim so a re-saved config names the same model class
};

/// Prints the config as its JSON form, prefixed with the class name.
PEFT_API std::ostream& operator<<(std::ostream& os, const PeftConfig& config);

/// A list-valued field that may be unset, as the setters below take it: a braced list (`{"lm_head"}`,
/// `{0, 2}`), a std::vector, std::nullopt, or a std::optional holding a vector (std::optional alone would not take
/// a braced list).
template <class T>
struct OptionalList {
  std::optional<std::vector<T>> value;
  OptionalList(std::nullopt_t) {}
  OptionalList(std::optional<std::vector<T>> list) : value(std::move(list)) {}
  OptionalList(std::vector<T> list) : value(std::move(list)) {}
  OptionalList(std::initializer_list<T> list) : value(std::vector<T>(list)) {}
};

/// Chaining setters for the shared fields, returning the concrete config type (LibTorch options style):
/// `peft::LoraConfig().r(16).target_modules({"q_proj", "v_proj"}).modules_to_save({"lm_head"})`.
template <class Derived>
class PEFT_API MethodConfig : public PeftConfig {
 public:
  using PeftConfig::exclude_modules;
  using PeftConfig::inference_mode;
  using PeftConfig::layers_pattern;
  using PeftConfig::layers_to_transform;
  using PeftConfig::modules_to_save;
  using PeftConfig::target_modules;
  using PeftConfig::task_type;
  using PeftConfig::base_model_name_or_path;
  using PeftConfig::revision;

  Derived& target_modules(TargetModules value) { target_modules_ = std::move(value); return self(); }
  Derived& exclude_modules(TargetModules value) { exclude_modules_ = std::move(value); return self(); }
  Derived& modules_to_save(OptionalList<std::string> value) { return set(modules_to_save_, std::move(value)); }
  Derived& layers_to_transform(OptionalList<int64_t> value) { return set(layers_to_transform_, std::move(value)); }
  Derived& layers_pattern(OptionalList<std::string> value) { return set(layers_pattern_, std::move(value)); }
  Derived& inference_mode(bool value) { inference_mode_ = value; return self(); }
  Derived& task_type(std::optional<std::string> value) { task_type_ = std::move(value); return self(); }
  Derived& base_model_name_or_path(std::optional<std::string> value) {
    base_model_name_or_path_ = std::move(value);
    return self();
  }
  Derived& revision(std::optional<std::string> value) { revision_ = std::move(value); return self(); }

  std::shared_ptr<PeftConfig> clone() const override { return std::make_shared<Derived>(self()); }

 private:
  template <class T>
  Derived& set(std::optional<std::vector<T>>& field, OptionalList<T> value) {
    field = std::move(value.value);
    return self();
  }
  Derived& self() { return static_cast<Derived&>(*this); }
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

/// Reads Python PEFT's adapter_config.json (a file path). Only `peft_type` is required; missing fields take
/// their defaults, unknown fields are ignored with one warning naming them, and values peft-cpp cannot
/// honour are rejected with peft::ConfigError.
PEFT_API std::shared_ptr<PeftConfig> load_config(const std::string& adapter_config_json_path);
/// Same, from the JSON text.
PEFT_API std::shared_ptr<PeftConfig> config_from_json_string(const std::string& json_text);

/// The peft_types peft-cpp can inject ("ADALORA", "BOFT", ..., "LORA", ...), sorted.
PEFT_API std::vector<std::string> supported_peft_types();

}  // namespace peft
