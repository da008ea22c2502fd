#pragma once

// Python PEFT's checkpoint key conventions, in one place.

#include <string>

namespace peft::detail {

/// save_pretrained's prefix of every key in adapter_model.safetensors.
inline const std::string kSavePrefix = "base_model.model.";

/// The prefix of model-level keys: tensors Python PEFT keeps on the tuner object rather than on a layer, such as
/// VeRA's shared projections ("base_model.vera_A", see Method::SharedContainer). save_pretrained writes them as
/// they are.
inline const std::string kSharedPrefix = "base_model.";

/// `key` without save_pretrained's "base_model.model." prefix.
inline std::string strip_save_prefix(const std::string& key) {
  return key.compare(0, kSavePrefix.size(), kSavePrefix) == 0 ? key.substr(kSavePrefix.size()) : key;
}

/// The module a method's key belongs to ("lin0" for "lin0.lora_A.weight" with prefix "lora_"), or "" when the
/// key is none of the method's tensors (Python's rule: the part before the last ".<prefix>").
inline std::string module_of_key(const std::string& key, const std::string& method_prefix) {
  const auto pos = key.rfind("." + method_prefix);
  return pos == std::string::npos ? std::string() : key.substr(0, pos);
}

}  // namespace peft::detail
