// The regex helper's re.subn (used by load_adapter's key_mapping) against Python's re.subn
// (tests/data/methods/state_dict_options/regex_subn.json, made by make_reference.py there).

#include "core/python_regex.h"

#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <peft/error.h>

namespace {

TEST(PythonRegexSubn, MatchesPythonsReSubn) {
  const nlohmann::json cases = nlohmann::json::parse(std::ifstream(PEFT_STATE_DICT_OPTIONS_DIR "/regex_subn.json"));
  ASSERT_GT(cases.size(), 10u);
  for (const auto& c : cases) {
    const std::string pattern = c["pattern"], replacement = c["replacement"], subject = c["subject"];
    SCOPED_TRACE("re.subn(" + pattern + ", " + replacement + ", " + subject + ")");
    const peft::detail::PythonRegex regex(pattern, peft::detail::PythonRegex::Anchor::Search, "key_mapping");
    if (c.contains("error")) {
      // Python's message without its " at position N".
      std::string python = c["error"];
      python = python.substr(0, python.find(" at position"));
      if (python.front() == '"') python = python.substr(1, python.size() - 2);
      try {
        regex.subn(replacement, subject);
        ADD_FAILURE() << "no error; Python: " << python;
      } catch (const peft::ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find(python), std::string::npos) << e.what() << " / " << python;
      }
      continue;
    }
    const auto [result, count] = regex.subn(replacement, subject);
    EXPECT_EQ(result, c["result"].get<std::string>());
    EXPECT_EQ(count, c["count"].get<size_t>());
  }
}

}  // namespace
