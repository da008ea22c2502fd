#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include <c10/util/Exception.h>

namespace peft_test {

/// Collects TORCH_WARN messages while alive (LibTorch has one process-wide warning handler).
class WarningCapture : public c10::WarningHandler {
 public:
  WarningCapture() : guard_(this) {}
  void process(const c10::SourceLocation&, const std::string& msg, const bool) override { messages.push_back(msg); }
  bool contains(const std::string& text) const {
    return std::any_of(messages.begin(), messages.end(), [&](const std::string& m) { return m.find(text) != std::string::npos; });
  }
  std::vector<std::string> messages;

 private:
  c10::Warning::WarningHandlerGuard guard_;
};

}  // namespace peft_test
