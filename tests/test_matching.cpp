// Python PEFT's module selection rules, quirks included. The table is Python PEFT's own
// REGEX_TEST_CASES (tests/test_tuners_utils.py), so both implementations answer the same questions.

#include "core/matching.h"

#include <gtest/gtest.h>

#include <peft/peft.h>

namespace {

using peft::detail::MatchResult;
using peft::detail::TargetMatcher;

struct RegexCase {
  std::string key;
  std::variant<std::vector<std::string>, std::string> targets;  // list, or a regex string
  std::optional<std::vector<int64_t>> layers_to_transform;
  std::optional<std::vector<std::string>> layers_pattern;
  bool expected;
};

using Names = std::vector<std::string>;
using Ints = std::vector<int64_t>;
const std::nullopt_t None = std::nullopt;

const std::vector<RegexCase> kPythonCases = {
    {"", Names{}, None, None, false},
    {"", Names{"foo"}, None, None, false},
    {"foo", Names{}, None, None, false},
    {"foo", Names{"foo"}, None, None, true},
    {"foo", Names{"bar"}, None, None, false},
    {"foo", Names{"foo", "bar"}, None, None, true},
    {"foo", std::string("foo"), None, None, true},
    {"foo", std::string(".*oo"), None, None, true},
    {"foo", std::string("fo.*"), None, None, true},
    {"foo", std::string(".*bar.*"), None, None, false},
    {"foobar", std::string(".*oba.*"), None, None, true},
    {"foo.bar.1.baz", Names{"baz"}, Ints{1}, Names{"bar"}, true},
    {"foo.bar.1.baz", Names{"baz"}, Ints{0}, Names{"bar"}, false},
    {"foo.bar.1.baz", Names{"baz"}, Ints{2}, Names{"bar"}, false},
    {"foo.bar.10.baz", Names{"baz"}, Ints{0}, Names{"bar"}, false},
    {"foo.bar.10.baz", Names{"baz"}, Ints{1}, Names{"bar"}, false},
    {"foo.bar.1.baz", Names{"baz"}, Ints{0, 1, 2}, Names{"bar"}, true},
    {"foo.bar.1.baz", Names{"baz", "spam"}, Ints{1}, Names{"bar"}, true},
    {"foo.bar.1.baz", Names{"baz", "spam"}, Ints{0, 1, 2}, Names{"bar"}, true},
    {"foo.whatever.1.baz", Names{"baz"}, Ints{1}, Names{}, true},
    {"foo.whatever.1.baz", Names{"baz"}, Ints{0}, Names{}, false},
    {"foo.whatever.1.baz", Names{"baz"}, Ints{1}, Names{""}, true},  // Python: layers_pattern=""
    {"foo.whatever.1.baz", Names{"baz"}, Ints{0}, Names{""}, false},
    {"foo.whatever.1.baz", Names{"baz"}, Ints{1}, None, true},
    {"foo.whatever.1.baz", Names{"baz"}, Ints{0}, None, false},
    {"transformer.h.1.attn.attention.q_proj.foo", Names{"q_proj"}, None, Names{}, false},
    {"transformer.h.1.attn.attention.q_proj", Names{}, None, Names{}, false},
    {"transformer.h.1.attn.attention.q_proj", Names{"q_proj"}, None, Names{}, true},
    {"transformer.h.1.attn.attention.q_proj", Names{"q_proj", "v_proj"}, None, Names{}, true},
    {"transformer.h.1.attn.attention.resid_dropout", Names{"q_proj", "v_proj"}, None, Names{}, false},
    {"transformer.h.1.attn.attention.q_proj", Names{"q_proj"}, Ints{1}, Names{"h"}, true},
    {"transformer.h.1.attn.attention.q_proj", Names{"q_proj"}, Ints{0}, Names{"h"}, false},
    {"transformer.h.1.attn.attention.q_proj", Names{"q_proj"}, Ints{2}, Names{"h"}, false},
    {"transformer.h.1.attn.attention.q_proj", Names{"q_proj"}, Ints{0, 1, 2}, Names{"h"}, true},
    {"transformer.h.1.attn.attention.q_proj", Names{"q_proj", "v_proj"}, Ints{0, 1, 2}, Names{"h"}, true},
    {"foo.bar.q_proj", Names{"q_proj"}, None, Names{}, true},
    {"foo.bar.1.baz", Names{"baz"}, Ints{1}, Names{"foo"}, false},
    {"foo.bar.1.baz", Names{"baz"}, Ints{1}, Names{"baz"}, false},
    {"bar.1.baz", Names{"baz"}, Ints{1}, Names{"bar"}, false},
    {"foo.bar.001.baz", Names{"baz"}, Ints{1}, Names{"bar"}, true},
    {"foo.bar.1.spam.2.baz", Names{"baz"}, Ints{1}, Names{"bar"}, true},
    {"foo.bar.2.spam.1.baz", Names{"baz"}, Ints{1}, Names{"bar"}, false},
    {"blocks.1.weight", Names{"weight"}, Ints{1}, Names{"blocks"}, false},
    {"blocks.1.bias", Names{"weight"}, Ints{1}, Names{"blocks"}, false},
    {"mlp.blocks.1.weight", Names{"weight"}, Ints{1}, Names{"blocks"}, true},
    {"mlp.blocks.1.bias", Names{"weight"}, Ints{1}, Names{"blocks"}, false},
};

peft::LoraConfig config_for(const RegexCase& c) {
  peft::LoraConfig config;
  if (auto* names = std::get_if<Names>(&c.targets)) {
    config.target_modules(peft::TargetModules(*names));
  } else {
    config.target_modules(peft::TargetModules::regex(std::get<std::string>(c.targets)));
  }
  config.layers_to_transform(c.layers_to_transform).layers_pattern(c.layers_pattern);
  return config;
}

TEST(Matching, PythonRegexTestCases) {
  for (const RegexCase& c : kPythonCases) {
    const TargetMatcher matcher(config_for(c));
    EXPECT_EQ(matcher.match(c.key) == MatchResult::Match, c.expected) << "key '" << c.key << "'";
  }
}

TEST(Matching, ExactNameIgnoresLayersToTransform) {
  // Python checks layers_to_transform only on the suffix branch: an exact name always matches.
  peft::LoraConfig config;
  config.target_modules({"model.layers.5.q_proj"}).layers_to_transform(Ints{0});
  EXPECT_EQ(TargetMatcher(config).match("model.layers.5.q_proj"), MatchResult::Match);
  EXPECT_EQ(TargetMatcher(config).match("x.model.layers.5.q_proj"), MatchResult::NoMatch);
}

TEST(Matching, SuffixMustFollowADot) {
  peft::LoraConfig config;
  config.target_modules({"in0"});
  EXPECT_EQ(TargetMatcher(config).match("lin0"), MatchResult::NoMatch);
  EXPECT_EQ(TargetMatcher(config).match("a.in0"), MatchResult::Match);
}

TEST(Matching, RegexMustMatchTheWholeName) {
  peft::LoraConfig config;
  config.target_modules(peft::TargetModules::regex("lin[02]"));
  EXPECT_EQ(TargetMatcher(config).match("lin0"), MatchResult::Match);
  EXPECT_EQ(TargetMatcher(config).match("lin2"), MatchResult::Match);
  EXPECT_EQ(TargetMatcher(config).match("a.lin0"), MatchResult::NoMatch);
  EXPECT_EQ(TargetMatcher(config).match("lin01"), MatchResult::NoMatch);
}

TEST(Matching, PythonRegexSyntaxLookaroundAndNamedGroups) {
  peft::LoraConfig config;
  config.target_modules(peft::TargetModules::regex(R"(^(?!.*vision)(?P<all>.*\.(q_proj|v_proj))$)"));
  const TargetMatcher matcher(config);
  EXPECT_EQ(matcher.match("model.text.layers.0.q_proj"), MatchResult::Match);
  EXPECT_EQ(matcher.match("model.vision.layers.0.q_proj"), MatchResult::NoMatch);
}

TEST(Matching, ExcludeModulesComeFirst) {
  peft::LoraConfig config;
  config.target_modules({"q_proj"}).exclude_modules({"layers.1.q_proj"});
  const TargetMatcher matcher(config);
  EXPECT_EQ(matcher.match("m.layers.0.q_proj"), MatchResult::Match);
  EXPECT_EQ(matcher.match("m.layers.1.q_proj"), MatchResult::Excluded);
  config.exclude_modules(peft::TargetModules::regex(".*layers\\.0.*"));
  EXPECT_EQ(TargetMatcher(config).match("m.layers.0.q_proj"), MatchResult::Excluded);
  EXPECT_EQ(TargetMatcher(config).match("m.layers.1.q_proj"), MatchResult::Match);
}

TEST(Matching, ModulesToSaveAreNeverTargets) {
  peft::LoraConfig config;
  config.target_modules({"lin"}).modules_to_save(Names{"head"});
  const TargetMatcher matcher(config);
  EXPECT_EQ(matcher.match("head.lin"), MatchResult::Excluded);  // under a module to save
  EXPECT_EQ(matcher.match("a.head"), MatchResult::Excluded);
  EXPECT_EQ(matcher.match("a.lin"), MatchResult::Match);
}

TEST(Matching, ModulesToSaveSelectionIsAPlainSuffix) {
  // Python's _set_trainable uses key.endswith(name), without a "." before it.
  EXPECT_TRUE(peft::detail::matches_modules_to_save({"head"}, "lm_head"));
  EXPECT_TRUE(peft::detail::matches_modules_to_save({"lm_head"}, "lm_head"));
  EXPECT_FALSE(peft::detail::matches_modules_to_save({"lm_head"}, "lm_head.x"));
}

TEST(Matching, RankPatternFirstMatchingKeyWins) {
  // Keys match as (.*\.)?(KEY)$ from the start of the name.
  const peft::PatternMap<int64_t> patterns{{"lin0", 4}, {"layers\\.\\d+\\.lin1", 6}, {"lin", 2}};
  const peft::detail::PatternLookup<int64_t> lookup(patterns, "rank_pattern");
  EXPECT_EQ(lookup.lookup("lin0", 8), 4);
  EXPECT_EQ(lookup.lookup("a.lin0", 8), 4);
  EXPECT_EQ(lookup.lookup("xlin0", 8), 8);  // "x" is not a "."-separated prefix
  EXPECT_EQ(lookup.lookup("m.layers.3.lin1", 8), 6);
  EXPECT_EQ(lookup.lookup("m.lin", 8), 2);
  EXPECT_EQ(lookup.lookup("m.lin1", 8), 8);
}

TEST(Matching, InvalidRegexNamesTheField) {
  peft::LoraConfig config;
  config.target_modules(peft::TargetModules::regex("lin("));
  try {
    TargetMatcher matcher(config);
    FAIL() << "expected a ConfigError";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("target_modules"), std::string::npos) << e.what();
  }
}

TEST(Matching, CatastrophicBacktrackingIsRefusedNotHung) {
  peft::LoraConfig config;
  config.target_modules(peft::TargetModules::regex("(a+)+$"));
  const TargetMatcher matcher(config);
  EXPECT_THROW(matcher.match(std::string(40, 'a') + "b"), peft::ConfigError);
}

}  // namespace
