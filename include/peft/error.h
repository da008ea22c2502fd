#pragma once

#include <stdexcept>
#include <string>

#include <peft/export.h>

namespace peft {

/// Base of every exception peft-cpp throws on purpose. Messages say what was wrong and what to do.
class PEFT_API Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A config value, or a combination of values, that cannot be honoured (Python PEFT: ValueError).
class PEFT_API ConfigError : public Error {
 public:
  using Error::Error;
};

/// No module of the model was selected for adaptation (Python PEFT: NoMatchingPeftModuleError).
class PEFT_API NoMatchingPeftModuleError : public ConfigError {
 public:
  using ConfigError::ConfigError;
};

/// A selected module has a type the adapter method cannot adapt.
class PEFT_API UnsupportedLayerError : public Error {
 public:
  using Error::Error;
};

/// A state dict does not fit the model: shapes, dtypes, devices.
class PEFT_API StateDictError : public Error {
 public:
  using Error::Error;
};

/// A file that is missing, unreadable or malformed (safetensors, adapter_config.json).
class PEFT_API FileFormatError : public Error {
 public:
  using Error::Error;
};

/// An adapter that cannot be merged, or whose merge would produce NaN/Inf (safe_merge).
class PEFT_API MergeError : public Error {
 public:
  using Error::Error;
};

/// An adapter name that does not exist, or that exists already.
class PEFT_API AdapterNameError : public Error {
 public:
  using Error::Error;
};

/// Calls of the model's layers would not reach the adapters injected into them.
class PEFT_API RoutingError : public Error {
 public:
  using Error::Error;
};

}  // namespace peft
