#pragma once

#include <string>

namespace peft::detail {

/// Writes `bytes` to a temporary file next to `path`, flushes it to disk and renames it over `path`, so a
/// reader (or a crash) sees either the old file or the new one, never a part.
void write_file_atomically(const std::string& path, const std::string& bytes);

/// The whole file; throws FileFormatError when it cannot be read.
std::string read_whole_file(const std::string& path);

}  // namespace peft::detail
