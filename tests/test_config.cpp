// LoraConfig as a builder, and adapter_config.json as Python PEFT writes it.

#include <fstream>

#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::config_test {
namespace {

std::string python_config(const std::string& case_name) {
  std::ifstream in(case_dir(case_name) / "adapter_config.json");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

nlohmann::json python_json(const std::string& case_name) { return nlohmann::json::parse(python_config(case_name)); }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(LoraConfig, BuilderChainsInAnyOrder) {
  auto cfg = peft::LoraConfig().lora_alpha(16).lora_dropout(0.1).r(64).bias("none").target_modules({"linear"});
  EXPECT_EQ(cfg.r(), 64);
  EXPECT_EQ(cfg.lora_alpha(), 16);
  EXPECT_DOUBLE_EQ(cfg.lora_dropout(), 0.1);
  EXPECT_EQ(cfg.target_modules(), peft::TargetModules({"linear"}));
  auto other = peft::LoraConfig().target_modules({"q_proj", "v_proj"}).r(16).modules_to_save({{"lm_head"}}).use_rslora(true);
  EXPECT_EQ(other.r(), 16);
  EXPECT_TRUE(other.use_rslora());
  EXPECT_EQ(other.modules_to_save()->front(), "lm_head");
  EXPECT_EQ(other.peft_type(), "LORA");
  std::shared_ptr<peft::PeftConfig> copy = other.clone();
  EXPECT_EQ(static_cast<peft::LoraConfig&>(*copy).r(), 16);

  // Braced lists and std::nullopt, as <peft/config.h>'s example writes them.
  auto listed = peft::LoraConfig().modules_to_save({"head"}).layers_to_transform({1}).layers_pattern({"blocks"});
  EXPECT_EQ(*listed.modules_to_save(), std::vector<std::string>{"head"});
  EXPECT_EQ(*listed.layers_to_transform(), std::vector<int64_t>{1});
  EXPECT_EQ(*listed.layers_pattern(), std::vector<std::string>{"blocks"});
  listed.modules_to_save(std::nullopt).layers_to_transform(std::nullopt).layers_pattern(std::nullopt);
  EXPECT_FALSE(listed.modules_to_save().has_value());
  EXPECT_FALSE(listed.layers_to_transform().has_value());
  EXPECT_FALSE(listed.layers_pattern().has_value());
}

TEST(LoraConfig, DefaultsFollowPython) {
  const peft::LoraConfig cfg;
  EXPECT_EQ(cfg.r(), 8);
  EXPECT_EQ(cfg.lora_alpha(), 8);
  EXPECT_EQ(cfg.lora_dropout(), 0.0);
  EXPECT_EQ(cfg.bias(), "none");
  EXPECT_TRUE(cfg.init_lora_weights().is_bool() && cfg.init_lora_weights().enabled());
  EXPECT_FALSE(cfg.target_modules().is_set());
  EXPECT_FALSE(cfg.use_dora() || cfg.use_rslora() || cfg.fan_in_fan_out() || cfg.lora_bias() || cfg.inference_mode());
}

TEST(LoraConfig, TargetModulesForms) {
  EXPECT_TRUE(peft::TargetModules({"a", "b", "a"}).names() == std::vector<std::string>({"a", "b"}));
  EXPECT_TRUE(peft::TargetModules::regex(".*a").is_regex());
  EXPECT_TRUE(peft::TargetModules::all_linear().is_all_linear());
  std::ostringstream os;
  os << peft::TargetModules({"v", "q"});
  EXPECT_EQ(os.str(), "{'q', 'v'}");
}

TEST(LoraConfig, ValidationUsesPythonMessages) {
  // Texts from tests/data/vectors/errors/errors.json.
  EXPECT_EQ(error_of([] { peft::LoraConfig().r(0).target_modules({"lin0"}).validate(); }),
            "`r` should be a positive integer value but the value passed is 0");
  EXPECT_EQ(error_of([] { peft::LoraConfig().use_dora(true).lora_bias(true).target_modules({"lin0"}).validate(); }),
            "The argument lora_bias=True is not supported for DoRA, please pass use_dora=False");
  EXPECT_EQ(error_of([] { peft::LoraConfig().target_modules({"lin0"}).layers_pattern({{"blocks"}}).validate(); }),
            "When `layers_pattern` is specified, `layers_to_transform` must also be specified. ");
  EXPECT_EQ(error_of([] {
              peft::LoraConfig().target_modules(peft::TargetModules::regex(".*lin0")).layers_to_transform({0}).validate();
            }),
            "`layers_to_transform` cannot be used when `target_modules` is a str.");
  EXPECT_NE(error_of([] { peft::LoraConfig().bias("some").validate(); }).find("Requested bias: some"), std::string::npos);
  EXPECT_NE(error_of([] { peft::LoraConfig().init_lora_weights("loftq").validate(); }).find("not supported by peft-cpp"),
            std::string::npos);
  EXPECT_THROW(peft::LoraConfig().lora_dropout(1.0).validate(), peft::ConfigError);
  EXPECT_THROW(peft::LoraConfig().rank_pattern({{"lin0", 0}}).validate(), peft::ConfigError);
}

TEST(ConfigFile, ReadsEveryLoraVectorWithoutWarnings) {
  for (const auto& name : cases_with_peft_type("LORA")) {
    WarningCapture warnings;
    const auto config = peft::load_config((case_dir(name) / "adapter_config.json").string());
    EXPECT_TRUE(warnings.messages.empty()) << name << ": " << warnings.messages.front();
    ASSERT_EQ(config->peft_type(), "LORA");
    const auto& lora = dynamic_cast<const peft::LoraConfig&>(*config);
    const nlohmann::json py = python_json(name);
    EXPECT_EQ(lora.r(), py["r"].get<int64_t>()) << name;
    EXPECT_EQ(lora.lora_alpha(), py["lora_alpha"].get<double>()) << name;
    EXPECT_EQ(lora.use_dora(), py["use_dora"].get<bool>()) << name;
    EXPECT_EQ(lora.inference_mode(), py["inference_mode"].get<bool>()) << name;
  }
}

TEST(ConfigFile, FieldValuesAreRead) {
  const auto config = peft::load_config((vectors_dir() / "lora_mlp_rank_alpha_pattern" / "adapter_config.json").string());
  const auto& lora = dynamic_cast<const peft::LoraConfig&>(*config);
  const nlohmann::json py = python_json("lora_mlp_rank_alpha_pattern");
  EXPECT_EQ(lora.rank_pattern().size(), py["rank_pattern"].size());
  EXPECT_EQ(lora.alpha_pattern().size(), py["alpha_pattern"].size());
  const auto regex = peft::load_config((vectors_dir() / "lora_mlp_regex" / "adapter_config.json").string());
  EXPECT_TRUE(regex->target_modules().is_regex());
  EXPECT_EQ(regex->target_modules().pattern(), python_json("lora_mlp_regex")["target_modules"].get<std::string>());
  const auto blocks = peft::load_config((vectors_dir() / "lora_blocks_layers_to_transform" / "adapter_config.json").string());
  EXPECT_EQ(*blocks->layers_to_transform(), std::vector<int64_t>({0, 2}));
  EXPECT_EQ(*blocks->layers_pattern(), std::vector<std::string>({"blocks"}));
}

TEST(ConfigFile, WritesWhatPythonWrites) {
  // Same keys and values as Python's file, apart from what names the writer.
  for (const auto& name : cases_with_peft_type("LORA")) {
    const auto config = peft::load_config((case_dir(name) / "adapter_config.json").string());
    nlohmann::json ours = nlohmann::json::parse(config->to_json_string());
    nlohmann::json theirs = python_json(name);
    for (auto* j : {&ours, &theirs}) {
      j->erase("peft_version");
      if ((*j)["target_modules"].is_array()) {
        auto t = (*j)["target_modules"].get<std::vector<std::string>>();
        std::sort(t.begin(), t.end());
        (*j)["target_modules"] = t;
      }
    }
    EXPECT_EQ(ours, theirs) << name << "\n" << nlohmann::json::diff(theirs, ours).dump(1);
  }
}

TEST(ConfigFile, RoundTripsThroughText) {
  auto cfg = peft::LoraConfig().r(4).lora_alpha(8.5).target_modules(peft::TargetModules::regex(".*q")).use_dora(true)
                 .rank_pattern({{"a", 2}}).init_lora_weights("gaussian").modules_to_save({{"head"}});
  const auto back = peft::config_from_json_string(cfg.to_json_string());
  const auto& lora = dynamic_cast<const peft::LoraConfig&>(*back);
  EXPECT_EQ(lora.r(), 4);
  EXPECT_EQ(lora.lora_alpha(), 8.5);
  EXPECT_EQ(lora.target_modules(), cfg.target_modules());
  EXPECT_TRUE(lora.use_dora());
  EXPECT_EQ(lora.rank_pattern(), cfg.rank_pattern());
  EXPECT_EQ(lora.init_lora_weights().method(), "gaussian");
  EXPECT_EQ(*lora.modules_to_save(), std::vector<std::string>({"head"}));
}

TEST(ConfigFile, OnlyPeftTypeIsRequired) {
  const auto config = peft::config_from_json_string(R"({"peft_type": "LORA", "target_modules": ["q"]})");
  EXPECT_EQ(dynamic_cast<const peft::LoraConfig&>(*config).r(), 8);
  EXPECT_NE(error_of([] { peft::config_from_json_string(R"({"r": 8})"); }).find("peft_type"), std::string::npos);
}

TEST(ConfigFile, IntegralFloatsCountAsIntegers) {
  const auto config = peft::config_from_json_string(
      R"({"peft_type": "LORA", "r": 16.0, "layers_to_transform": [1.0, 2], "rank_pattern": {"q": 4.0}})");
  const auto& lora = dynamic_cast<const peft::LoraConfig&>(*config);
  EXPECT_EQ(lora.r(), 16);
  ASSERT_TRUE(lora.layers_to_transform().has_value());
  EXPECT_EQ(*lora.layers_to_transform(), (std::vector<int64_t>{1, 2}));
  ASSERT_EQ(lora.rank_pattern().size(), 1u);
  EXPECT_EQ(lora.rank_pattern()[0].second, 4);
}

TEST(ConfigFile, UnknownFieldsWarnOnceNamingThem) {
  WarningCapture warnings;
  peft::config_from_json_string(R"({"peft_type": "LORA", "shiny_new_option": 1, "another": null})");
  ASSERT_EQ(warnings.messages.size(), 1u);
  EXPECT_NE(warnings.messages[0].find("shiny_new_option"), std::string::npos);
  EXPECT_NE(warnings.messages[0].find("another"), std::string::npos);
}

TEST(ConfigFile, RejectsWhatCannotBeHonoured) {
  const char* cases[][2] = {
      {R"({"peft_type": "LORA", "use_qalora": true})", "use_qalora"},
      {R"({"peft_type": "LORA", "alora_invocation_tokens": 3})", "alora_invocation_tokens"},
      {R"({"peft_type": "LORA", "layer_replication": [[0, 2, 4]]})", "layer_replication"},
      {R"({"peft_type": "LORA", "init_lora_weights": "loftq"})", "loftq"},
      {R"({"peft_type": "LORA", "target_parameters": "w"})", "target_parameters"},
      {R"({"peft_type": "LORA", "trainable_token_indices": "embed_tokens"})", "trainable_token_indices"},
      {R"({"peft_type": "LORA", "trainable_token_indices": {"embed_tokens": [-1]}})", "trainable_token_indices"},
      {R"({"peft_type": "LORA", "r": "eight"})", "'r'"},
      {R"({"peft_type": "LORA", "target_modules": 3})", "target_modules"},
      {R"({"peft_type": "LORA", "rank_pattern": {"a": 1.5}})", "rank_pattern"},
      {R"({"peft_type": "PROMPT_TUNING"})", "prompt learning"},
      {R"({"peft_type": "NOT_A_METHOD"})", "not supported"},
      {R"({"peft_type": "LORA", )", "not valid JSON"},
      {R"({"peft_type": "LORA", "r": 1E999})", "not valid JSON"},  // found by fuzz/config_fuzzer
      // Integers beyond int64 (the fuzzer found 2e74 converted with undefined behaviour): refused, named.
      {R"({"peft_type": "LORA", "r": 2.0e74})", "'r' must be an integer"},
      {R"({"peft_type": "LORA", "r": 18446744073709551615})", "'r' must be an integer"},
      {R"({"peft_type": "LORA", "layers_to_transform": [1, 9223372036854775808]})", "layers_to_transform"},
      {R"({"peft_type": "LORA", "rank_pattern": {"a": 1e30}})", "rank_pattern"},
      {R"({"peft_type": "FOURIERFT", "n_frequency": 207777777777777777777777777777})", "'n_frequency' must be an integer"},
      {R"([1, 2])", "JSON object"},
  };
  for (const auto& c : cases) {
    const std::string message = error_of([&] { peft::config_from_json_string(c[0]); });
    EXPECT_NE(message.find(c[1]), std::string::npos) << c[0] << " -> " << message;
  }
  EXPECT_THROW(peft::load_config("/nonexistent/adapter_config.json"), peft::FileFormatError);
}

}  // namespace
}  // namespace peft_test::config_test
