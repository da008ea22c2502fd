// libFuzzer target for adapter_config.json. Every input must either give a valid config or be rejected
// with a peft::Error (ConfigError or FileFormatError); anything else is a finding.

#include <cstddef>
#include <cstdint>
#include <string>

#include <peft/config.h>
#include <peft/error.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto config = peft::config_from_json_string(text);
    // A config that was accepted writes out and reads back.
    peft::config_from_json_string(config->to_json_string());
  } catch (const peft::Error&) {
  }
  return 0;
}
