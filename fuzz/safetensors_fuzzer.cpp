// libFuzzer target for the safetensors reader. Every input must either parse or be rejected with
// peft::FileFormatError; anything else (a crash, a sanitizer report, another exception) is a finding.

#include <cstddef>
#include <cstdint>
#include <string>

#include <peft/error.h>
#include <peft/safetensors.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    peft::safetensors::Metadata metadata;
    const peft::StateDict tensors = peft::safetensors::load_bytes(bytes, &metadata);
    // What parsed must write back and parse again to the same tensors.
    const peft::StateDict again = peft::safetensors::load_bytes(peft::safetensors::save_bytes(tensors, metadata));
    if (again.size() != tensors.size()) __builtin_trap();
  } catch (const peft::FileFormatError&) {
  }
  return 0;
}
