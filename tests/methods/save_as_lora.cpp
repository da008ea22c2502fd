// PiSSA / OLoRA adapters saved as plain LoRA (save_adapter_as_lora, subtract_mutated_init) against Python PEFT's
// save_pretrained(path_initial_model_for_weight_conversion=...) (tests/data/methods/save_as_lora/, made by its
// make_reference.py): the converted files, the rewritten initial config, and the converted adapter on the original base.

#include <torch/torch.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include <peft/peft.h>
#include <peft/tuners/lora/save_as_lora.h>

#include "support/errors.h"
#include "support/small_mlp.h"
#include "support/vectors.h"
#include "support/scratch.h"

namespace peft_test::save_as_lora_test {
namespace {

namespace fs = std::filesystem;

fs::path data_dir() { return cases_dir().parent_path() / "methods" / "save_as_lora"; }

SmallMlp base_model() { return load_small_mlp(data_dir() / "base.safetensors"); }

peft::LoraConfig case_config(const std::string& name) {
  if (name == "pissa") return peft::LoraConfig().r(4).lora_alpha(8).init_lora_weights("pissa").target_modules({"lin0", "lin1"});
  if (name == "olora_rslora") {
    return peft::LoraConfig().r(4).lora_alpha(8).use_rslora(true).init_lora_weights("olora").target_modules({"lin0", "lin1"});
  }
  return peft::LoraConfig()
      .r(4)
      .lora_alpha(8)
      .init_lora_weights("pissa")
      .target_modules({"lin0", "lin1", "lin2"})
      .rank_pattern({{"lin1", 2}})
      .alpha_pattern({{"lin1", 3.0}});
}

at::Tensor output_of(const fs::path& file) { return peft::safetensors::load_file(file.string())["output"]; }
at::Tensor input() { return peft::safetensors::load_file((data_dir() / "input.safetensors").string())["x"]; }

nlohmann::json json_of(const fs::path& file) { return nlohmann::json::parse(std::ifstream(file)); }


class SaveAsLora : public testing::TestWithParam<std::string> {};

TEST_P(SaveAsLora, MatchesPythonsConversion) {
  const fs::path dir = data_dir() / GetParam();
  SmallMlp model = base_model();
  peft::inject_adapter_in_model(case_config(GetParam()), model);
  peft::set_peft_model_state_dict(model, peft::safetensors::load_file((dir / "trained.safetensors").string()));
  torch::NoGradGuard no_grad;
  const at::Tensor trained = model->forward(input());
  EXPECT_LT(max_abs_diff(trained, output_of(dir / "output_trained.safetensors")), 1e-5) << "the trained PiSSA model";

  Scratch scratch("save_as_lora_" + std::string(GetParam()));
  // Python rewrites the initial adapter's config: work on a copy of it.
  fs::copy(dir / "initial", scratch / "initial");
  fs::remove(scratch / "initial" / "adapter_config.json");
  peft::save_adapter_as_lora(model, (scratch / "converted").string(), (scratch / "initial").string());

  const peft::StateDict ours = peft::safetensors::load_file((scratch / "converted" / "adapter_model.safetensors").string());
  const peft::StateDict python = peft::safetensors::load_file((dir / "converted" / "adapter_model.safetensors").string());
  ASSERT_EQ(ours.keys(), python.keys());
  for (const auto& item : python) EXPECT_LT(max_abs_diff(ours[item.key()], item.value()), 1e-6) << item.key();

  for (const auto& [ours_file, python_file] : {std::pair{scratch / "converted" / "adapter_config.json", dir / "converted" / "adapter_config.json"},
                                               std::pair{scratch / "initial" / "adapter_config.json", dir / "initial" / "adapter_config.json"}}) {
    const nlohmann::json a = json_of(ours_file), b = json_of(python_file);
    for (const char* key : {"r", "init_lora_weights", "rank_pattern", "alpha_pattern", "use_rslora", "inference_mode"}) {
      EXPECT_EQ(a[key], b[key]) << ours_file << " " << key;
    }
    // A set in Python: its order is not defined.
    auto targets = [](const nlohmann::json& config) {
      auto list = config["target_modules"].get<std::vector<std::string>>();
      std::sort(list.begin(), list.end());
      return list;
    };
    EXPECT_EQ(targets(a), targets(b)) << ours_file;
    EXPECT_NEAR(a["lora_alpha"].get<double>(), b["lora_alpha"].get<double>(), 1e-9) << ours_file;
  }

  // The converted adapter is a plain LoRA on the original weights.
  SmallMlp fresh = base_model();
  peft::load_adapter(fresh, (scratch / "converted").string());
  const at::Tensor converted = fresh->forward(input());
  EXPECT_LT(max_abs_diff(converted, output_of(dir / "output_converted.safetensors")), 1e-5);
  EXPECT_LT(max_abs_diff(converted, trained), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Python, SaveAsLora, testing::Values("pissa", "olora_rslora", "pissa_patterns"));

TEST(SaveAsLoraErrors, RefusedBeforeAnyFileIsWritten) {
  Scratch scratch("save_as_lora_errors");
  fs::copy(data_dir() / "pissa" / "initial", scratch / "initial");
  const std::string initial_config = (scratch / "initial" / "adapter_config.json").string();
  const auto before = fs::last_write_time(initial_config);

  SmallMlp rslora = base_model();
  peft::inject_adapter_in_model(case_config("olora_rslora").rank_pattern({{"lin1", 2}}), rslora);
  expect_error<peft::ConfigError>(
      [&] { peft::save_adapter_as_lora(rslora, (scratch / "a").string(), (scratch / "initial").string()); },
      "at the same time as `use_rslora=True`");

  SmallMlp model = base_model();
  peft::inject_adapter_in_model(case_config("pissa"), model);
  expect_error<peft::FileFormatError>(
      [&] { peft::save_adapter_as_lora(model, (scratch / "b").string(), (scratch / "missing").string()); }, "missing");
  // An initial adapter of another shape (the patterns case has lin1 at rank 2 and lin2 too).
  fs::copy(data_dir() / "pissa_patterns" / "initial", scratch / "other_initial");
  SmallMlp patterns = base_model();
  peft::inject_adapter_in_model(case_config("pissa"), patterns);
  expect_error<peft::StateDictError>(
      [&] { peft::save_adapter_as_lora(patterns, (scratch / "c").string(), (scratch / "other_initial").string()); },
      "lin1.lora_A.weight");
  EXPECT_FALSE(fs::exists(scratch / "a") || fs::exists(scratch / "b") || fs::exists(scratch / "c"));
  EXPECT_EQ(fs::last_write_time(initial_config), before);
}

TEST(SaveAsLoraErrors, SubtractMutatedInitStacksAAndNegatedB) {
  peft::StateDict trained, initial;
  trained.insert("lin.lora_A.weight", torch::ones({2, 3}));
  trained.insert("lin.lora_B.weight", torch::ones({4, 2}));
  trained.insert("lin.lora_magnitude_vector", torch::ones({4}));
  initial.insert("base_model.model.lin.lora_A.weight", torch::full({2, 3}, 2.0));
  initial.insert("base_model.model.lin.lora_B.weight", torch::full({4, 2}, 3.0));
  const peft::StateDict out = peft::subtract_mutated_init(trained, initial);
  ASSERT_EQ(out.keys(), (std::vector<std::string>{"lin.lora_A.weight", "lin.lora_B.weight"}));
  EXPECT_TRUE(out["lin.lora_A.weight"].equal(torch::cat({torch::ones({2, 3}), torch::full({2, 3}, 2.0)}, 0)));
  EXPECT_TRUE(out["lin.lora_B.weight"].equal(torch::cat({torch::ones({4, 2}), torch::full({4, 2}, -3.0)}, 1)));
}

}  // namespace
}  // namespace peft_test::save_as_lora_test
