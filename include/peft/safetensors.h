#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <peft/export.h>
#include <peft/state_dict.h>

/// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian header
/// length, a JSON header naming each tensor's dtype, shape and byte range, then the raw data. Readers
/// check untrusted files strictly (header bounds, offsets in range, contiguous and non-overlapping, sizes
/// equal to numel x element size) and throw peft::FileFormatError naming the file and the offending key.
namespace peft::safetensors {

using Metadata = std::map<std::string, std::string>;

struct LoadOptions {
  /// Map the file and hand out tensors that view it (copy-on-write, so writes never reach the file);
  /// tensors whose data is not aligned for their dtype are copied. Off: read everything into memory.
  bool mmap = true;
};

/// Reads every tensor of a file, in the file's header order.
PEFT_API StateDict load_file(const std::string& path, const LoadOptions& options = {});
/// Reads the `__metadata__` of a file (empty if it has none).
PEFT_API Metadata load_metadata(const std::string& path);
/// Parses a whole file held in memory (the tensors are copied out of `bytes`).
PEFT_API StateDict load_bytes(const std::string& bytes, Metadata* metadata = nullptr);

/// Writes tensors (any device and layout; they are copied to contiguous CPU memory) the way the Python
/// safetensors package does: largest dtypes first, then by name, header padded to 8 bytes. The file is
/// written to a temporary name in the same directory, flushed and renamed, so readers never see half a file.
PEFT_API void save_file(const StateDict& tensors, const std::string& path, const Metadata& metadata = {});
/// The bytes save_file would write.
PEFT_API std::string save_bytes(const StateDict& tensors, const Metadata& metadata = {});

}  // namespace peft::safetensors
