#include "progress.h"

#include <cstdio>

#include <unistd.h>

#include "files.h"

namespace peft_cli {

Progress::Progress(std::string label, uint64_t total_bytes)
    : label_(std::move(label)), total_(total_bytes), enabled_(::isatty(2) == 1), start_(std::chrono::steady_clock::now()) {
  draw();
}

Progress::~Progress() {
  if (enabled_ && !finished_) std::fputc('\n', stderr);
}

void Progress::advance(uint64_t bytes) {
  done_ += bytes;
  draw();
}

void Progress::finish() {
  done_ = total_;
  draw();
  if (enabled_) std::fputc('\n', stderr);
  finished_ = true;
}

void Progress::draw() {
  if (!enabled_) return;
  const double fraction = total_ ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(fraction * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, '.');
  char eta[32] = "--:--";
  if (fraction > 0 && fraction < 1) {
    const int seconds = static_cast<int>(elapsed / fraction * (1 - fraction));
    std::snprintf(eta, sizeof eta, "%02d:%02d", seconds / 60, seconds % 60);
  } else if (fraction >= 1) {
    std::snprintf(eta, sizeof eta, "done in %.1fs", elapsed);
  }
  std::fprintf(stderr, "\r%s [%s] %s / %s %3d%%  ETA %s   ", label_.c_str(), bar.c_str(), human_bytes(done_).c_str(),
               human_bytes(total_).c_str(), static_cast<int>(fraction * 100), eta);
  std::fflush(stderr);
}

}  // namespace peft_cli
