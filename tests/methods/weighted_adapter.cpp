// add_weighted_adapter against Python PEFT's LoraModel.add_weighted_adapter (tests/data/methods/weighted_adapter/,
// made by its make_reference.py): every combination_type on Linear, Embedding and Conv2d layers, the new adapter's
// tensors and config, and what is refused.

#include <torch/torch.h>

#include <fstream>

#include <peft/peft.h>

#include "support/errors.h"
#include "support/layers.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::weighted_adapter_test {
namespace {

namespace fs = std::filesystem;

fs::path data_dir() { return cases_dir().parent_path() / "methods" / "weighted_adapter"; }

struct ModelImpl : torch::nn::Module {
  nn::Embedding emb{12, 6};
  nn::Linear lin0{6, 10}, lin1{10, 6};
  nn::Conv2d conv{torch::nn::Conv2dOptions(6, 4, {3, 1}).padding({1, 0})};
  ModelImpl() {
    register_module("emb", emb);
    register_module("lin0", lin0);
    register_module("lin1", lin1);
    register_module("conv", conv);
  }
  at::Tensor forward(const at::Tensor& ids) {
    const at::Tensor h = lin1(torch::relu(lin0(emb(ids))));
    return conv(h.transpose(1, 2).unsqueeze(-1)).flatten(1);
  }
};
TORCH_MODULE(Model);

// The base model with Python's adapters a, b, c loaded.
Model model_with_adapters() {
  Model m;
  const peft::StateDict weights = peft::safetensors::load_file((data_dir() / "base.safetensors").string());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : m->named_parameters()) p.value().copy_(weights[p.key()]);
  }
  m->eval();
  for (const char* name : {"a", "b", "c"}) peft::load_adapter(m, (data_dir() / "adapters" / name).string(), name);
  peft::set_adapter(m, "a");
  return m;
}

at::Tensor ids() { return peft::safetensors::load_file((data_dir() / "input.safetensors").string())["ids"]; }

std::vector<std::string> case_names() {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(data_dir() / "cases")) out.push_back(entry.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

class WeightedAdapter : public testing::TestWithParam<std::string> {};

TEST_P(WeightedAdapter, MatchesPython) {
  const fs::path dir = data_dir() / "cases" / GetParam();
  const nlohmann::json call = nlohmann::json::parse(std::ifstream(dir / "case.json"));
  WarningCapture warnings;
  Model m = model_with_adapters();
  peft::WeightedAdapterOptions options;
  options.combination_type = call["combination_type"].get<std::string>();
  if (call.contains("svd_rank")) options.svd_rank = call["svd_rank"].get<int64_t>();
  if (call.contains("svd_clamp")) options.svd_clamp = call["svd_clamp"].get<double>();
  if (call.contains("svd_full_matrices")) options.svd_full_matrices = call["svd_full_matrices"].get<bool>();
  if (call.contains("density")) options.density = call["density"].get<double>();
  if (call.contains("majority_sign_method")) options.majority_sign_method = call["majority_sign_method"];
  torch::manual_seed(0);  // dare_* draw their masks, as Python's run did after the same seed
  peft::add_weighted_adapter(m, call["adapters"].get<std::vector<std::string>>(),
                             call["weights"].get<std::vector<double>>(), GetParam(), options);
  // Frozen, not activated.
  EXPECT_EQ(peft::active_adapters(m), std::vector<std::string>{"a"});
  for (const auto& p : m->named_parameters()) {
    if (p.key().find("." + GetParam() + ".") != std::string::npos || p.key().size() > GetParam().size() + 1 &&
        p.key().compare(p.key().size() - GetParam().size() - 1, std::string::npos, "." + GetParam()) == 0) {
      EXPECT_FALSE(p.value().requires_grad()) << p.key();
    }
  }
  // The tensors and the config Python saved.
  const peft::StateDict python = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
  const peft::StateDict ours = peft::get_peft_model_state_dict(m, GetParam());
  EXPECT_EQ(ours.size(), python.size());
  for (const auto& item : python) {
    const std::string key = item.key().substr(std::string("base_model.model.").size());
    ASSERT_TRUE(ours.contains(key)) << key;
    EXPECT_LT(max_abs_diff(ours[key], item.value()), 1e-5) << key;
  }
  const nlohmann::json theirs = nlohmann::json::parse(std::ifstream(dir / "adapter_config.json"));
  const auto config = std::dynamic_pointer_cast<const peft::LoraConfig>(peft::adapter_config(m, GetParam()));
  ASSERT_TRUE(config);
  EXPECT_EQ(config->r(), theirs["r"].get<int64_t>());
  EXPECT_EQ(config->lora_alpha(), theirs["lora_alpha"].get<double>());
  std::set<std::string> targets(config->target_modules().names().begin(), config->target_modules().names().end());
  EXPECT_EQ(targets, theirs["target_modules"].get<std::set<std::string>>());
  // The output with it.
  peft::set_adapter(m, GetParam());
  torch::NoGradGuard no_grad;
  const at::Tensor expected = peft::safetensors::load_file((dir / "expected.safetensors").string())["output"];
  EXPECT_LT(max_abs_diff(m->forward(ids()), expected), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Python, WeightedAdapter, testing::ValuesIn(case_names()),
                         [](const auto& info) { return info.param; });

TEST(WeightedAdapterChecks, BadCallsAreRefusedAndTheModelKept) {
  WarningCapture warnings;
  Model m = model_with_adapters();
  const std::vector<std::string> before = peft::adapter_names(m);
  peft::WeightedAdapterOptions linear;
  linear.combination_type = "linear";
  expect_error<peft::AdapterNameError>([&] { peft::add_weighted_adapter(m, {"a", "x"}, {1, 1}, "n"); },
                                       "Adapter x does not exist");
  expect_error<peft::AdapterNameError>([&] { peft::add_weighted_adapter(m, {"a", "b"}, {1, 1}, "c"); },
                                       "already exists");
  expect_error<peft::ConfigError>([&] { peft::add_weighted_adapter(m, {"a", "b"}, {1}, "n"); }, "2 adapters but 1");
  expect_error<peft::ConfigError>([&] { peft::add_weighted_adapter(m, {"a", "c"}, {1, 1}, "n", linear); },
                                  "All adapters must have the same r value");
  peft::WeightedAdapterOptions ties;
  ties.combination_type = "ties";
  expect_error<peft::ConfigError>([&] { peft::add_weighted_adapter(m, {"a", "b"}, {1, 1}, "n", ties); },
                                  "needs `density`");
  peft::WeightedAdapterOptions unknown;
  unknown.combination_type = "average";
  expect_error<peft::ConfigError>([&] { peft::add_weighted_adapter(m, {"a", "b"}, {1, 1}, "n", unknown); },
                                  "Invalid combination_type: average");
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).use_dora(true).target_modules({"lin0"}), m, "dora");
  expect_error<peft::ConfigError>([&] { peft::add_weighted_adapter(m, {"a", "dora"}, {1, 1}, "n"); }, "DoRA");
  peft::delete_adapter(m, "dora");
  EXPECT_EQ(peft::adapter_names(m), before);
}

}  // namespace
}  // namespace peft_test::weighted_adapter_test
