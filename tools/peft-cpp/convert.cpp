// peft-cpp convert: an adapter rewritten in Python PEFT's layout (save_pretrained keys), optionally in
// another dtype.

#include <peft/safetensors.h>

#include "commands.h"
#include "files.h"

namespace peft_cli {

void convert(const ConvertOptions& options, std::ostream& out) {
  if (fs::exists(options.out)) throw UserError(options.out.string() + " already exists; choose a new --out");
  const AdapterFiles adapter = open_adapter(options.adapter, /*require_config=*/true);
  const std::optional<c10::ScalarType> dtype =
      options.dtype ? std::optional<c10::ScalarType>(parse_dtype(*options.dtype)) : std::nullopt;

  // Keys as save_pretrained writes them: "base_model.model." + the module path, without the adapter name
  // (inject-style state dicts may have either difference).
  static const std::string prefix = "base_model.model.";
  const std::string name_part = "." + options.adapter_name + ".";
  peft::StateDict converted;
  size_t renamed = 0;
  for (const auto& item : adapter.weights) {
    std::string key = item.key();
    if (key.compare(0, prefix.size(), prefix) != 0) key = prefix + key;
    if (const auto pos = key.find(name_part); pos != std::string::npos) key.erase(pos, name_part.size() - 1);
    const std::string tail = "." + options.adapter_name;
    if (key.size() > tail.size() && key.compare(key.size() - tail.size(), tail.size(), tail) == 0) {
      key.erase(key.size() - tail.size());
    }
    renamed += key != item.key() ? 1 : 0;
    if (converted.contains(key)) throw UserError("two tensors of " + adapter.weights_file.string() + " map to '" + key + "'");
    at::Tensor value = item.value();
    if (dtype && value.is_floating_point()) value = value.to(*dtype);
    converted.insert(key, value);
  }

  const fs::path staging = staging_path(options.out);
  fs::create_directories(staging);
  try {
    peft::safetensors::save_file(converted, (staging / "adapter_model.safetensors").string(), {{"format", "pt"}});
    // The config is copied as written: nothing in it depends on the dtype or the key layout.
    fs::copy_file(adapter.dir / "adapter_config.json", staging / "adapter_config.json");
    fs::rename(staging, options.out);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    throw;
  }
  out << "wrote " << options.out.string() << ": " << converted.size() << " tensors"
      << (dtype ? " in " + dtype_name(*dtype) : std::string()) << ", " << renamed << " key(s) renamed to the Python layout\n";
}

}  // namespace peft_cli
