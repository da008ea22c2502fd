#pragma once

#include <cstddef>
#include <string>

namespace peft::detail {

/// A file written under a temporary name next to `path` and renamed over it by commit() after a flush to
/// disk, so a reader (or a crash) sees either the old file or the new one, never a part. Destroyed without
/// commit(), it removes the temporary file.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t size);
  void commit();

 private:
  std::string path_, temp_;
  int fd_ = -1;
};

/// Writes `bytes` with an AtomicFileWriter.
void write_file_atomically(const std::string& path, const std::string& bytes);

}  // namespace peft::detail
