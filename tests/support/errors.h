#pragma once

#include <string>

#include <gtest/gtest.h>

namespace peft_test {

/// Runs `fn` and expects it to throw an E whose message contains `text`.
template <class E, class Fn>
void expect_error(Fn&& fn, const std::string& text) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected: " << text;
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
  }
}

}  // namespace peft_test
