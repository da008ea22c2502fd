#pragma once

// A byte-counting progress bar with ETA on stderr, drawn only when stderr is a terminal.

#include <chrono>
#include <cstdint>
#include <string>

namespace peft_cli {

class Progress {
 public:
  Progress(std::string label, uint64_t total_bytes);
  ~Progress();
  void advance(uint64_t bytes);
  void finish();

 private:
  void draw();

  std::string label_;
  uint64_t total_;
  uint64_t done_ = 0;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace peft_cli
