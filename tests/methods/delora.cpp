// DeLoRA beyond its vector (delora_mlp): the shared variant checks (rank_pattern / lambda_pattern, dropout,
// bias), forward and merge against Python's _compute_delta written out, the fixed weight norms,
// layers_to_transform and exclude_modules, and Python's config errors.

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::delora_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    Delora, MethodVariants,
    testing::Values(
        Variant{"delora", false,
                {{"peft_type", "DELORA"}, {"target_modules", {"lin0", "lin1"}}, {"r", 4}, {"init_weights", false}}},
        Variant{"delora_patterns", false,
                {{"peft_type", "DELORA"}, {"target_modules", {"lin0", "lin1"}}, {"r", 2}, {"delora_lambda", 7},
                 {"rank_pattern", {{"lin1", 6}}}, {"lambda_pattern", {{"lin0", 2.5}}}}},
        Variant{"delora_dropout_bias", false,
                {{"peft_type", "DELORA"}, {"target_modules", {"lin0", "lin1"}}, {"r", 3}, {"module_dropout", 0.1},
                 {"bias", "delora_only"}, {"init_weights", false}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Delora, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"DELORA", "emb"}, UnsupportedLayer{"DELORA", "conv1d"}),
                         UnsupportedLayerName());

/// Python's DeloraLayer._compute_delta, in float64.
at::Tensor python_delta(const peft::StateDict& sd, int64_t r) {
  const at::Tensor a = sd["lin.delora_A"].to(torch::kDouble), b = sd["lin.delora_B"].to(torch::kDouble);
  const at::Tensor lambda = sd["lin.delora_lambda"].to(torch::kDouble), w_norm = sd["lin.delora_w_norm"].to(torch::kDouble);
  const at::Tensor an = torch::clamp(a.norm(2, {1}), 1e-4), bn = torch::clamp(b.norm(2, {0}), 1e-4);
  const at::Tensor diag = torch::diag_embed(lambda / static_cast<double>(r) / (an * bn));
  return torch::matmul(torch::matmul(b, diag), a) * w_norm.unsqueeze(0);
}

TEST(Delora, ForwardAndMergeFollowPythonsDelta) {
  WarningCapture warnings;
  torch::manual_seed(5);
  OneLinear model(7, 9);
  model->eval();
  const at::Tensor weight = model->lin->weight.detach().clone();
  const at::Tensor bias = model->lin->bias.detach().clone();
  peft::inject_adapter_in_model(peft::DeloraConfig().r(3).delora_lambda(4).init_weights(false).target_modules({"lin"}), model);
  const peft::StateDict sd = peft::get_peft_model_state_dict(model);
  // The boundary starts at delora_lambda; the norms are the base weight's column norms.
  EXPECT_TRUE(torch::equal(sd["lin.delora_lambda"], torch::full({1}, 4.0)));
  EXPECT_LT(max_abs_diff(sd["lin.delora_w_norm"], weight.norm(2, {0})), 1e-6);
  const at::Tensor delta = python_delta(sd, 3);
  // lambda bounds the update: |dW diag(1/w_norm)|_F <= lambda.
  EXPECT_LE((delta / sd["lin.delora_w_norm"].to(torch::kDouble).unsqueeze(0)).norm().item<double>(), 4.0 + 1e-6);
  const at::Tensor x = torch::randn({5, 7});
  const at::Tensor expected =
      torch::matmul(x.to(torch::kDouble), (weight.to(torch::kDouble) + delta).t()) + bias.to(torch::kDouble);
  EXPECT_LT(max_abs_diff(model->forward(x).to(torch::kDouble), expected), 1e-5);
  peft::merge_adapter(model);
  EXPECT_LT(max_abs_diff(model->lin->weight.detach().to(torch::kDouble), weight.to(torch::kDouble) + delta), 1e-6);
  // The norms stay those of the original weight while it is merged.
  EXPECT_TRUE(torch::equal(peft::get_peft_model_state_dict(model)["lin.delora_w_norm"], sd["lin.delora_w_norm"]));
  peft::unmerge_adapter(model);
  EXPECT_LT(max_abs_diff(model->lin->weight.detach(), weight), 1e-6);
}

TEST(Delora, DefaultInitIsANoOp) {
  WarningCapture warnings;
  OneLinear model(6, 4);
  model->eval();
  const at::Tensor x = torch::randn({3, 6});
  const at::Tensor base = model->forward(x);
  peft::inject_adapter_in_model(peft::DeloraConfig().r(2).target_modules({"lin"}), model);
  const peft::StateDict sd = peft::get_peft_model_state_dict(model);
  EXPECT_TRUE(torch::equal(sd["lin.delora_B"], torch::zeros({4, 2})));
  EXPECT_GT(sd["lin.delora_A"].abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(sd["lin.delora_lambda"], torch::full({1}, 15.0)));
  EXPECT_LT(max_abs_diff(model->forward(x), base), 1e-6);
}

TEST(Delora, ModuleDropoutOnlyInTraining) {
  WarningCapture warnings;
  torch::manual_seed(0);
  OneLinear model(32, 8);
  peft::inject_adapter_in_model(
      peft::DeloraConfig().r(4).module_dropout(0.5).init_weights(false).target_modules({"lin"}), model);
  const at::Tensor x = torch::randn({4, 32});
  model->eval();
  EXPECT_TRUE(torch::equal(model->forward(x), model->forward(x)));
  model->train();
  EXPECT_GT(max_abs_diff(model->forward(x), model->forward(x)), 1e-6);
}

// encoder.blocks.{0,1,2}.lin and head (Python's layers_pattern does not match a ModuleList at the model root).
struct BlocksImpl : torch::nn::Module {
  torch::nn::ModuleList blocks;
  nn::Linear head{nullptr};
  BlocksImpl() {
    auto encoder = register_module("encoder", std::make_shared<torch::nn::Module>());
    blocks = encoder->register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < 3; ++i) {
      auto block = std::make_shared<torch::nn::Module>();
      block->register_module("lin", nn::Linear(4, 4));
      blocks->push_back(block);
    }
    head = register_module("head", nn::Linear(4, 4));
  }
};
TORCH_MODULE(Blocks);

TEST(Delora, LayersToTransformAndExcludeModules) {
  WarningCapture warnings;
  {
    Blocks model;
    peft::inject_adapter_in_model(
        peft::DeloraConfig().r(2).target_modules({"lin"}).layers_to_transform({{0, 2}}).layers_pattern({{"blocks"}}),
        model);
    EXPECT_EQ(peft::targeted_module_names(model), (std::vector<std::string>{"encoder.blocks.0.lin", "encoder.blocks.2.lin"}));
  }
  {
    Blocks model;
    peft::inject_adapter_in_model(
        peft::DeloraConfig().r(2).target_modules({"lin", "head"}).exclude_modules({"encoder.blocks.1.lin"}), model);
    EXPECT_EQ(peft::targeted_module_names(model),
              (std::vector<std::string>{"encoder.blocks.0.lin", "encoder.blocks.2.lin", "head"}));
  }
}

TEST(Delora, ConfigErrorsArePythons) {
  WarningCapture warnings;
  EXPECT_EQ(config_error({{"peft_type", "DELORA"}, {"r", 0}}), "`r` must be a positive integer; got 0.");
  EXPECT_EQ(config_error({{"peft_type", "DELORA"}, {"target_modules", ".*lin"}, {"layers_to_transform", {0}}}),
            "`layers_to_transform` cannot be used when `target_modules` is a str.");
  EXPECT_EQ(config_error({{"peft_type", "DELORA"}, {"layers_pattern", "blocks"}}),
            "When `layers_pattern` is specified, `layers_to_transform` must also be specified. ");
  EXPECT_NE(config_error({{"peft_type", "DELORA"}, {"bias", "lora_only"}}), "");
  EXPECT_NE(config_error({{"peft_type", "DELORA"}, {"module_dropout", 1.5}}), "");
  EXPECT_EQ(config_error({{"peft_type", "DELORA"}, {"delora_lambda", 2.5}, {"lambda_pattern", {{"q", 3}}}}), "");
  // Python writes delora_lambda as the int it declares.
  const std::string text = peft::DeloraConfig().to_json_string();
  EXPECT_NE(text.find("\"delora_lambda\": 15,"), std::string::npos) << text;
}

}  // namespace
}  // namespace peft_test::delora_test
