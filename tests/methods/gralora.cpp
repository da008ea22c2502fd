// GraLoRA beyond its vector (gralora_mlp, k=2): the shared variant checks (Hybrid GraLoRA, dropout, GPT-2's
// Conv1D), the block structure of the update written out block by block, inputs of any rank, Hybrid
// GraLoRA's checkpoint keys, and Python's configuration errors.

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::gralora_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    Gralora, MethodVariants,
    testing::Values(Variant{"gralora", false,
                            {{"peft_type", "GRALORA"}, {"target_modules", {"lin0", "lin1"}}, {"r", 4}, {"gralora_k", 2},
                             {"init_weights", false}}},
                    Variant{"gralora_hybrid", false,
                            {{"peft_type", "GRALORA"}, {"target_modules", {"lin0", "lin1"}}, {"r", 8}, {"gralora_k", 4},
                             {"hybrid_r", 2}, {"alpha", 16}, {"gralora_dropout", 0.1}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Gralora, UnsupportedLayers, testing::Values(UnsupportedLayer{"GRALORA", "emb"}),
                         UnsupportedLayerName());

at::Tensor state(const torch::nn::Module& model, const std::string& key) {
  const peft::StateDict dict = peft::get_peft_model_state_dict(model);
  const at::Tensor* found = dict.find(key);
  return found ? *found : at::Tensor();
}

/// The update as the paper defines it, block by block: the input slice n (in/k features) goes through A_n
/// (its gralora_A[n], in/k x r), whose r outputs are k groups of r/k; output block j (out/k features)
/// receives group j of every slice through rows n*r/k.. of B_j (gralora_B[j], r x out/k).
at::Tensor blockwise_update(const at::Tensor& a, const at::Tensor& b, int64_t k, double scaling) {
  const int64_t in_k = a.size(1), r = a.size(2), out_k = b.size(2), group = r / k;
  at::Tensor delta = torch::zeros({out_k * k, in_k * k}, torch::kDouble);
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t n = 0; n < k; ++n) {
      const at::Tensor a_part = a[n].narrow(1, j * group, group).to(torch::kDouble);  // (in/k, r/k)
      const at::Tensor b_part = b[j].narrow(0, n * group, group).to(torch::kDouble);  // (r/k, out/k)
      delta.narrow(0, j * out_k, out_k).narrow(1, n * in_k, in_k).copy_(torch::matmul(a_part, b_part).t());
    }
  }
  return delta * scaling;
}

TEST(Gralora, UpdateIsTheBlockwiseLowRankGrid) {
  WarningCapture warnings;
  for (int64_t k : {1, 2, 3}) {
    torch::manual_seed(0);
    OneLinear model(12, 6);
    const at::Tensor weight = model->lin->weight.detach().to(torch::kDouble);
    const at::Tensor bias = model->lin->bias.detach().to(torch::kDouble);
    peft::inject_adapter_in_model(
        peft::GraloraConfig().r(6).gralora_k(k).alpha(3).init_weights(false).target_modules({"lin"}), model);
    const at::Tensor delta =
        blockwise_update(state(*model, "lin.gralora_A"), state(*model, "lin.gralora_B"), k, 3.0 / 6.0);
    EXPECT_EQ(state(*model, "lin.gralora_A").sizes(), (std::vector<int64_t>{k, 12 / k, 6}));
    EXPECT_EQ(state(*model, "lin.gralora_B").sizes(), (std::vector<int64_t>{k, 6, 6 / k}));
    // Any leading shape: (5, 12) and (2, 3, 12).
    for (const at::Tensor& x : {torch::randn({5, 12}), torch::randn({2, 3, 12})}) {
      const at::Tensor expected = torch::matmul(x.to(torch::kDouble), (weight + delta).t()) + bias;
      EXPECT_LT(max_abs_diff(model->forward(x), expected), 1e-5) << "k=" << k << " x " << x.sizes();
    }
    peft::merge_and_unload(model);
    EXPECT_LT(max_abs_diff(model->lin->weight, weight + delta), 1e-6) << "k=" << k;
  }
}

TEST(Gralora, HybridAddsAPlainLoraPairSavedUnderItsModuleNames) {
  WarningCapture warnings;
  torch::manual_seed(0);
  OneLinear model(8, 4);
  const at::Tensor weight = model->lin->weight.detach().to(torch::kDouble);
  peft::inject_adapter_in_model(
      peft::GraloraConfig().r(4).hybrid_r(2).gralora_k(2).alpha(12).init_weights(false).target_modules({"lin"}), model);
  const peft::StateDict dict = peft::get_peft_model_state_dict(*model);
  std::vector<std::string> keys = dict.keys();
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"lin.gralora_A", "lin.gralora_A_general.weight", "lin.gralora_B",
                                            "lin.gralora_B_general.weight"}));
  EXPECT_EQ(dict.find("lin.gralora_A_general.weight")->sizes(), (std::vector<int64_t>{2, 8}));
  EXPECT_EQ(dict.find("lin.gralora_B_general.weight")->sizes(), (std::vector<int64_t>{4, 2}));
  const double scaling = 12.0 / (4 + 2);
  const at::Tensor delta = blockwise_update(*dict.find("lin.gralora_A"), *dict.find("lin.gralora_B"), 2, scaling) +
                           torch::matmul(dict.find("lin.gralora_B_general.weight")->to(torch::kDouble),
                                         dict.find("lin.gralora_A_general.weight")->to(torch::kDouble)) *
                               scaling;
  const at::Tensor x = torch::randn({3, 8});
  const at::Tensor expected =
      torch::matmul(x.to(torch::kDouble), (weight + delta).t()) + model->lin->bias.detach().to(torch::kDouble);
  EXPECT_LT(max_abs_diff(model->forward(x), expected), 1e-5);
  // Without hybrid_r the general containers hold Identity modules: nothing to save.
  OneLinear plain(8, 4);
  peft::inject_adapter_in_model(peft::GraloraConfig().r(4).target_modules({"lin"}), plain);
  EXPECT_EQ(peft::get_peft_model_state_dict(*plain).size(), 2u);
}

TEST(Gralora, InitWeightsStartsAsANoOp) {
  WarningCapture warnings;
  torch::manual_seed(0);
  OneLinear model(8, 4);
  const at::Tensor x = torch::randn({3, 8});
  const at::Tensor base = model->forward(x);
  peft::inject_adapter_in_model(peft::GraloraConfig().r(4).hybrid_r(2).target_modules({"lin"}), model);
  EXPECT_TRUE(torch::equal(model->forward(x), base));
  EXPECT_GT(state(*model, "lin.gralora_A").abs().max().item<double>(), 0.0);
  EXPECT_EQ(state(*model, "lin.gralora_B").abs().max().item<double>(), 0.0);
  EXPECT_EQ(state(*model, "lin.gralora_B_general.weight").abs().max().item<double>(), 0.0);
}

void expect_config_error(const std::string& json_text, const std::string& message) {
  try {
    peft::config_from_json_string(json_text);
    ADD_FAILURE() << json_text << " accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
}

TEST(Gralora, PythonsConfigErrors) {
  expect_config_error(R"({"peft_type": "GRALORA", "gralora_k": 0, "r": 0})",
                      "`gralora_k` should be a positive integer value but the value passed is 0");
  expect_config_error(R"({"peft_type": "GRALORA", "r": 6, "gralora_k": 4})", "r should be divisible by gralora_k, but got 6 and 4");
  expect_config_error(R"({"peft_type": "GRALORA", "r": 0})", "`r` should be a positive integer value but the value passed is 0");
  expect_config_error(R"({"peft_type": "GRALORA", "hybrid_r": -1})",
                      "`hybrid_r` should be a non-negative integer value but the value passed is -1");
  expect_config_error(R"({"peft_type": "GRALORA", "bias": "lora_only"})", "bias");
  expect_config_error(R"({"peft_type": "GRALORA", "exclude_modules": ["lin"]})", "exclude_modules");
  // Python's config has no exclude_modules: not written either.
  const json written = json::parse(peft::GraloraConfig().to_json_string());
  EXPECT_FALSE(written.contains("exclude_modules"));
  EXPECT_EQ(written["alpha"], 64);
  EXPECT_TRUE(written["alpha"].is_number_integer());
}

TEST(Gralora, LayersNotDivisibleByKAreRefusedWithoutChanges) {
  WarningCapture warnings;
  OneLinear model(9, 4);
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(peft::GraloraConfig().r(4).gralora_k(2).target_modules({"lin"}), model);
    ADD_FAILURE() << "in_features 9 accepted with gralora_k 2";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("in_features should be divisible by gralora_k, but got 9 and 2 (layer 'lin')"),
              std::string::npos)
        << e.what();
  }
  OneLinear narrow(8, 3);
  EXPECT_THROW(peft::inject_adapter_in_model(peft::GraloraConfig().r(4).gralora_k(2).target_modules({"lin"}), narrow),
               peft::ConfigError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  EXPECT_TRUE(peft::targeted_module_names(model).empty());
}

TEST(Gralora, Gpt2Conv1DMatchesTheLinearForm) {
  expect_conv1d_matches_linear_form(peft::GraloraConfig().r(4).hybrid_r(1).init_weights(false).target_modules({"lin"}));
}

}  // namespace
}  // namespace peft_test::gralora_test
