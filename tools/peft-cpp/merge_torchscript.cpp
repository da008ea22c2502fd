// peft-cpp merge with a TorchScript base (.pt): the adapters are loaded on the model itself and merged, and the
// model is written as a plain TorchScript file.

#include <torch/csrc/jit/serialization/import.h>

#include <peft/torchscript.h>

#include "commands.h"
#include "files.h"

namespace peft_cli {

bool is_torchscript_base(const fs::path& base) { return fs::is_regular_file(base) && base.extension() == ".pt"; }

void merge_torchscript(const MergeOptions& options, std::ostream& out) {
  for (double scale : options.scales) {
    if (scale != 1.0) {
      throw UserError("--scale is not supported with a TorchScript base (" + options.base.string() +
                      "): its adapters are merged on the model, at the scale their configs give");
    }
  }
  torch::jit::Module model = [&] {
    try {
      return torch::jit::load(options.base.string());
    } catch (const c10::Error& e) {
      throw UserError("cannot load " + options.base.string() + " as a TorchScript model: " + e.what_without_backtrace());
    }
  }();
  std::vector<std::string> names;
  for (size_t i = 0; i < options.adapters.size(); ++i) {
    names.push_back("adapter_" + std::to_string(i));
    peft::load_adapter(model, options.adapters[i].string(), names.back());
  }
  peft::merge_and_unload(model, /*safe_merge=*/true, names);
  if (options.dtype) {
    const c10::ScalarType dtype = parse_dtype(*options.dtype);
    model.to(dtype);
  }
  const fs::path staging = staging_path(options.out);
  try {
    model.save(staging.string());
    fs::rename(staging, options.out);
  } catch (...) {
    std::error_code ignored;
    fs::remove(staging, ignored);
    throw;
  }
  out << "merged " << names.size() << " adapter(s) into the TorchScript model; wrote " << options.out.string() << " ("
      << human_bytes(fs::file_size(options.out)) << ")\n";
}

}  // namespace peft_cli
