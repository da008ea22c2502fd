#pragma once

// The peft-cpp subcommands. Each throws UserError (or another peft::Error) for bad input.

#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace peft_cli {

struct InspectOptions {
  std::filesystem::path adapter;
  bool json = false;
};
void inspect(const InspectOptions& options, std::ostream& out);

struct MergeOptions {
  std::filesystem::path base;
  std::vector<std::filesystem::path> adapters;
  std::vector<double> scales;  // one per adapter (missing ones are 1)
  std::filesystem::path out;
  std::optional<std::string> dtype;
};
void merge(const MergeOptions& options, std::ostream& out);
/// A base that is a TorchScript file (.pt): merged on the model, written as a TorchScript file.
bool is_torchscript_base(const std::filesystem::path& base);
void merge_torchscript(const MergeOptions& options, std::ostream& out);

struct ConvertOptions {
  std::filesystem::path adapter;
  std::filesystem::path out;
  std::optional<std::string> dtype;
  std::string adapter_name = "default";
};
void convert(const ConvertOptions& options, std::ostream& out);

/// The adapter-injection guide's walk-through, then inspect and merge on what it saved; returns the exit code.
int demo(const std::filesystem::path& dir, std::ostream& out);

}  // namespace peft_cli
