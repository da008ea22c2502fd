// DeFT: its variants in the shared fixtures, and what the vectors do not cover: the identity start, the rank
// cap, exact unmerging after merging several adapters, GPT-2's Conv1D, dropout, PaRa, config checks.

#include <peft/tuners/deft/config.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::deft_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    Deft, MethodVariants,
    testing::Values(
        Variant{"deft", false, {{"peft_type", "DEFT"}, {"target_modules", kMlpTargets}, {"r", 4}, {"init_weights", false}}},
        Variant{"deft_qr_alpha_dropout", false,
                {{"peft_type", "DEFT"}, {"target_modules", kMlpTargets}, {"r", 4}, {"decomposition_method", "qr"},
                 {"alpha", 8}, {"deft_dropout", 0.1}}},
        Variant{"deft_para", false,
                {{"peft_type", "DEFT"}, {"target_modules", kMlpTargets}, {"r", 3}, {"para", true}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Deft, UnsupportedLayers, testing::Values(UnsupportedLayer{"DEFT", "emb"}),
                         UnsupportedLayerName());

const at::Tensor& mlp_input() {
  static const at::Tensor x = torch::randn({3, 16}, torch::Generator(at::detail::createCPUGenerator(11)));
  return x;
}

Mlp make_mlp() {
  torch::manual_seed(5);
  Mlp model;
  model->eval();
  return model;
}

// The vector case's seed (torch.manual_seed(1234) before the injection) gives Python's P and R.
TEST(Deft, SeededInjectionOfTheVectorCase) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("deft_mlp");
  VectorModel model = base_model(c);
  torch::manual_seed(1234);
  peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), *model);
  const peft::StateDict ours = peft::get_peft_model_state_dict(*model);
  for (const auto& item : c.tensors("peft_state_dict.safetensors")) {
    ASSERT_TRUE(ours.contains(item.key())) << item.key();
    EXPECT_LE(max_abs_diff(ours[item.key()], item.value()), 1e-7) << item.key();
  }
}

TEST(Deft, DefaultInitIsTheIdentity) {
  WarningCapture warnings;
  for (const std::string method : {"relu", "qr"}) {
    Mlp model = make_mlp();
    const at::Tensor base = model->forward(mlp_input());
    peft::inject_adapter_in_model(peft::DeftConfig().r(4).alpha(6).decomposition_method(method).target_modules({"lin0", "lin1"}),
                                  model);
    EXPECT_LT(max_abs_diff(model->forward(mlp_input()), base), 1e-5) << method;
  }
  // PaRa has no injection term to cancel the removal.
  Mlp model = make_mlp();
  const at::Tensor base = model->forward(mlp_input());
  peft::inject_adapter_in_model(peft::DeftConfig().r(4).para(true).target_modules({"lin0", "lin1"}), model);
  EXPECT_GT(max_abs_diff(model->forward(mlp_input()), base), 1e-6);
  for (const auto& item : peft::get_peft_model_state_dict(*model)) {
    EXPECT_EQ(item.key().find("deft_R"), std::string::npos) << "PaRa has no R: " << item.key();
  }
}

// A bfloat16 layer: P and R in its dtype, the update computed in float32, the output in x's dtype.
TEST(Deft, Bfloat16LayersComputeInFloat32) {
  WarningCapture warnings;
  Mlp model = make_mlp();
  model->to(torch::kBFloat16);
  const at::Tensor x = mlp_input().to(torch::kBFloat16);
  const at::Tensor base = model->forward(x);
  peft::inject_adapter_in_model(peft::DeftConfig().r(4).target_modules({"lin0", "lin1"}), model);
  for (const auto& item : peft::get_peft_model_state_dict(*model)) EXPECT_EQ(item.value().scalar_type(), torch::kBFloat16);
  const at::Tensor adapted = model->forward(x);
  EXPECT_EQ(adapted.scalar_type(), torch::kBFloat16);
  EXPECT_LT(max_abs_diff(adapted.to(torch::kFloat), base.to(torch::kFloat)), 0.1) << "close to the identity";
  peft::merge_adapter(*model);
  EXPECT_LT(max_abs_diff(model->forward(x).to(torch::kFloat), adapted.to(torch::kFloat)), 0.1);
}

TEST(Deft, RankIsCappedAtOutFeatures) {
  WarningCapture warnings;
  Mlp model = make_mlp();
  peft::inject_adapter_in_model(peft::DeftConfig().r(20).target_modules({"lin0", "lin1"}), model);
  const peft::StateDict sd = peft::get_peft_model_state_dict(*model);
  EXPECT_EQ(sd["lin0.deft_P"].sizes(), (std::vector<int64_t>{24, 20}));
  EXPECT_EQ(sd["lin1.deft_P"].sizes(), (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(sd["lin1.deft_R"].sizes(), (std::vector<int64_t>{16, 24}));
}

TEST(Deft, AlphaZeroMeansNoScaling) {
  WarningCapture warnings;
  auto output = [](std::optional<int64_t> alpha) {
    Mlp model = make_mlp();
    torch::manual_seed(9);
    peft::inject_adapter_in_model(peft::DeftConfig().r(4).alpha(alpha).init_weights(false).target_modules({"lin0", "lin1"}),
                                  model);
    return model->forward(mlp_input());
  };
  EXPECT_TRUE(torch::equal(output(0), output(std::nullopt)));
  EXPECT_GT(max_abs_diff(output(8), output(std::nullopt)), 1e-4);
}

// Merging several adapters adds their independent updates (what the forward computes), and unmerging
// subtracts exactly what each merge added, although the base weight changed in between.
TEST(Deft, MergesOfSeveralAdaptersUnmergeExactly) {
  WarningCapture warnings;
  Mlp model = make_mlp();
  const ModelSnapshot original(*model);
  torch::manual_seed(2);
  peft::inject_adapter_in_model(peft::DeftConfig().r(4).init_weights(false).target_modules({"lin0", "lin1"}), model);
  peft::inject_adapter_in_model(
      peft::DeftConfig().r(2).decomposition_method("qr").alpha(4).init_weights(false).target_modules({"lin1"}), model,
      "other");
  peft::set_adapter(*model, {"default", "other"});
  const at::Tensor both = model->forward(mlp_input());
  auto base_weights_restored = [&] {
    for (const std::string key : {"lin0.weight", "lin1.weight"}) {
      EXPECT_LT(max_abs_diff(model->named_parameters()[key], original.values.at(key)), 1e-6) << key;
    }
  };

  peft::merge_adapter(*model, {"default", "other"});
  EXPECT_LT(max_abs_diff(model->forward(mlp_input()), both), 1e-5);
  peft::unmerge_adapter(*model);
  base_weights_restored();
  EXPECT_LT(max_abs_diff(model->forward(mlp_input()), both), 1e-5);

  // One after the other: the second merge starts from the merged weight (as in Python), and the unmerge
  // still gets back to the original weights.
  peft::merge_adapter(*model, {"default"});
  peft::merge_adapter(*model, {"other"});
  peft::unmerge_adapter(*model);
  base_weights_restored();
}

// GPT-2's Conv1D stores its weight (in, out): DeFT follows it, and matches a Linear holding the transpose.
struct ConvAndLinearImpl : torch::nn::Module {
  GPT2Conv1D conv{nullptr};
  nn::Linear lin{nullptr};
  ConvAndLinearImpl() {
    conv = register_module("conv", GPT2Conv1D(6, 5));
    lin = register_module("lin", nn::Linear(5, 6));
    torch::NoGradGuard no_grad;
    conv->bias.normal_();
    lin->weight.copy_(conv->weight.t());
    lin->bias.copy_(conv->bias);
  }
};
TORCH_MODULE(ConvAndLinear);

TEST(Deft, Gpt2Conv1DMatchesTheTransposedLinear) {
  torch::manual_seed(4);
  ConvAndLinear model;
  model->eval();
  const at::Tensor x = torch::randn({2, 3, 5});
  const at::Tensor base = model->conv(x);
  {
    WarningCapture warnings;
    peft::inject_adapter_in_model(peft::DeftConfig().r(3).target_modules({"conv"}), model);
    EXPECT_TRUE(warnings.contains("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True."));
    EXPECT_LT(max_abs_diff(model->conv(x), base), 1e-5) << "identity init";
  }
  WarningCapture warnings;
  peft::inject_adapter_in_model(peft::DeftConfig().r(3).fan_in_fan_out(true).init_weights(false).target_modules({"conv", "lin"}),
                                model, "random");
  EXPECT_TRUE(warnings.contains("fan_in_fan_out is set to True but the target module is `torch::nn::Linear`"));
  peft::set_adapter(*model, "random");
  // The Linear's adapter takes the Conv1D's values: P and R do not depend on how the weight is stored.
  peft::StateDict values;
  for (const auto& item : peft::get_peft_model_state_dict(*model, "random")) {
    if (item.key().rfind("conv.", 0) == 0) values.insert("lin." + item.key().substr(5), item.value());
  }
  peft::set_peft_model_state_dict(*model, values, "random");
  const at::Tensor adapted = model->conv(x);
  EXPECT_GT(max_abs_diff(adapted, base), 1e-4);
  EXPECT_LT(max_abs_diff(adapted, model->lin(x)), 1e-5);

  const at::Tensor weight = model->conv->weight.detach().clone();
  peft::merge_adapter(*model, {"random"});
  EXPECT_LT(max_abs_diff(model->conv(x), adapted), 1e-5);
  peft::unmerge_adapter(*model);
  EXPECT_LT(max_abs_diff(model->conv->weight, weight), 1e-6);
}

TEST(Deft, DropoutActsInTrainingOnly) {
  WarningCapture warnings;
  Mlp model = make_mlp();
  peft::inject_adapter_in_model(
      peft::DeftConfig().r(4).deft_dropout(0.5).init_weights(false).target_modules({"lin0", "lin1"}), model);
  bool found = false;
  for (const auto& m : model->named_modules()) found = found || m.key() == "lin0.deft_dropout.default";
  EXPECT_TRUE(found) << "deft_dropout.default is registered as in Python";
  const at::Tensor eval = model->forward(mlp_input());
  EXPECT_TRUE(torch::equal(model->forward(mlp_input()), eval));
  model->train();
  EXPECT_GT(max_abs_diff(model->forward(mlp_input()), eval), 1e-6);
  model->eval();
  EXPECT_TRUE(torch::equal(model->forward(mlp_input()), eval));
}

TEST(Deft, ConfigChecksArePythons) {
  auto message = [](json config) {
    config["peft_type"] = "DEFT";
    if (!config.contains("target_modules")) config["target_modules"] = {"lin0"};
    try {
      peft::config_from_json_string(config.dump())->validate();
    } catch (const peft::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(message({{"decomposition_method", "svd"}}), "Unknown decomposition_method 'svd', must be one of ['qr', 'relu'].");
  EXPECT_EQ(message({{"r", 0}}), "`r` should be a positive integer value but the value passed is 0");
  EXPECT_EQ(message({{"target_modules", "lin.*"}, {"layers_to_transform", {0}}}),
            "`layers_to_transform` cannot be used when `target_modules` is a str.");
  EXPECT_NE(message({{"deft_dropout", 1.5}}).find("deft_dropout"), std::string::npos);
  EXPECT_NE(message({{"bias", "lora_only"}}).find("deft_only"), std::string::npos);
  EXPECT_EQ(message({{"decomposition_method", "qr"}, {"alpha", 16}, {"para", true}, {"bias", "deft_only"}}), "accepted");
}

}  // namespace
}  // namespace peft_test::deft_test
