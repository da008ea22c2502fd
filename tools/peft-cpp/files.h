#pragma once

// Finding and reading the files the commands work on: base checkpoints (one file, or shards with a
// model.safetensors.index.json) and Python PEFT adapter directories.

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <peft/config.h>
#include <peft/error.h>
#include <peft/state_dict.h>

namespace peft_cli {

namespace fs = std::filesystem;

/// A mistake in what the user asked for (exit code 1).
struct UserError : peft::Error {
  using peft::Error::Error;
};

struct BaseCheckpoint {
  fs::path dir;                       // where the shard files are
  std::vector<std::string> shards;    // file names, in order
  std::optional<nlohmann::json> index;  // the index file's contents, when sharded
  std::string index_name;
  bool single_file = false;           // the user named one .safetensors file
  std::map<std::string, std::string> shard_of;  // tensor name -> shard file name

  uint64_t total_bytes() const;
};

/// A .safetensors file, or a directory with model.safetensors.index.json, model.safetensors, or one
/// .safetensors file.
BaseCheckpoint open_base(const fs::path& path);

struct AdapterFiles {
  fs::path dir;
  fs::path weights_file;
  std::shared_ptr<peft::PeftConfig> config;  // null when only a weights file was given and no config is beside it
  peft::StateDict weights;
};

/// An adapter directory (adapter_config.json + adapter_model.safetensors) or an adapter .safetensors file.
AdapterFiles open_adapter(const fs::path& path, bool require_config);

/// Parses "bf16" / "f16" / "f32" (and their long names).
c10::ScalarType parse_dtype(const std::string& name);
std::string dtype_name(c10::ScalarType dtype);

/// Up to `count` names from `candidates` closest to `name` (edit distance), for "did you mean" lists.
std::vector<std::string> closest_names(const std::string& name, const std::vector<std::string>& candidates,
                                       size_t count = 3);

/// A fresh sibling path for staging an output that is renamed into place at the end.
fs::path staging_path(const fs::path& out);

std::string human_bytes(uint64_t bytes);

}  // namespace peft_cli
