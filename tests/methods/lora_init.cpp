// LoRA's init_lora_weights methods from a seed against Python PEFT (tests/data/methods/lora_init/, made by its
// make_reference.py): the initialised adapter, the base weights after the init (PiSSA, fast PiSSA and OLoRA move
// part of them into the adapter) and the output; MiCA's frozen lora_B.

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/errors.h"
#include "support/small_mlp.h"
#include "support/vectors.h"

namespace peft_test::lora_init_test {
namespace {

namespace fs = std::filesystem;

fs::path data_dir() { return cases_dir().parent_path() / "methods" / "lora_init"; }

SmallMlp base_model() { return load_small_mlp(data_dir() / "base.safetensors"); }

peft::LoraConfig config_for(const std::string& init) {
  auto config = peft::LoraConfig().r(4).lora_alpha(8).target_modules({"lin0", "lin1", "lin2"});
  if (init == "true") return config.init_lora_weights(true);
  return config.init_lora_weights(init);
}

class LoraInit : public testing::TestWithParam<std::string> {};

TEST_P(LoraInit, MatchesPythonFromTheSameSeed) {
  const peft::StateDict expected = peft::safetensors::load_file((data_dir() / (GetParam() + ".safetensors")).string());
  SmallMlp model = base_model();
  torch::manual_seed(7);
  peft::inject_adapter_in_model(config_for(GetParam()), model);
  const peft::StateDict adapter = peft::get_peft_model_state_dict(model);
  size_t compared = 0;
  for (const auto& item : expected) {
    const std::string& key = item.key();
    if (key.rfind("adapter.", 0) == 0) {
      const std::string name = key.substr(std::string("adapter.base_model.model.").size());
      ASSERT_TRUE(adapter.contains(name)) << name;
      EXPECT_LT(max_abs_diff(adapter[name], item.value()), 1e-5) << name;
      ++compared;
    } else if (key.rfind("base.", 0) == 0) {
      const std::string name = key.substr(5);  // lin0.weight
      const at::Tensor weight = model->named_parameters()[name];
      EXPECT_LT(max_abs_diff(weight, item.value()), 1e-5) << name;
      ++compared;
    }
  }
  EXPECT_EQ(compared, adapter.size() + 3);
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(model->forward(peft::safetensors::load_file((data_dir() / "input.safetensors").string())["x"]),
                         expected["output"]),
            1e-5);
}

INSTANTIATE_TEST_SUITE_P(Python, LoraInit,
                         testing::Values("pissa", "pissa_niter_2", "pissa_niter_0", "olora", "gaussian", "orthogonal",
                                         "true", "mica"));

// MiCA trains only lora_A: lora_B stays frozen through activation, mark_only_adapters_as_trainable and
// set_requires_grad, as Python's frozen_peft_weight_names keeps it.
TEST(LoraInitMica, LoraBStaysFrozen) {
  SmallMlp model = base_model();
  peft::inject_adapter_in_model(config_for("mica"), model);
  const auto check = [&](const std::string& when) {
    for (const auto& item : model->named_parameters()) {
      if (item.key().find("lora_A") != std::string::npos) EXPECT_TRUE(item.value().requires_grad()) << when << item.key();
      if (item.key().find("lora_B") != std::string::npos) EXPECT_FALSE(item.value().requires_grad()) << when << item.key();
    }
  };
  check("after injection: ");
  peft::mark_only_adapters_as_trainable(model);
  check("after mark_only_adapters_as_trainable: ");
  peft::set_requires_grad(model, {"default"}, true);
  check("after set_requires_grad: ");
  peft::set_adapter(model, "default");
  check("after set_adapter: ");
  // Python's trainable flags, in named_parameters order (A then B per layer).
  const at::Tensor python = peft::safetensors::load_file((data_dir() / "mica.safetensors").string())["trainable"];
  std::vector<bool> ours;
  for (const auto& item : model->named_parameters()) {
    if (item.key().find("lora_") != std::string::npos) ours.push_back(item.value().requires_grad());
  }
  ASSERT_EQ(static_cast<int64_t>(ours.size()), python.numel());
  for (size_t i = 0; i < ours.size(); ++i) EXPECT_EQ(ours[i], python[i].item<bool>()) << i;

  SmallMlp too_wide = base_model();
  expect_error<peft::ConfigError>(
      [&] { peft::inject_adapter_in_model(config_for("mica").r(5).target_modules({"lin2"}), too_wide); },
      "MiCA requires `r` <= min(in_features, out_features) but got r=5");
  expect_error<peft::ConfigError>(
      [&] { peft::inject_adapter_in_model(config_for("corda"), too_wide); }, "need data peft-cpp does not have");
}

}  // namespace
}  // namespace peft_test::lora_init_test
