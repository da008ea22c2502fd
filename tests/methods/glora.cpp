// GLoRA beyond its cases (glora_mlp, glora_constant_none, glora_mlp_nobias): the shared variant checks, the
// effective weight and bias against the formula, merging a second adapter on top of a merged one (both
// computed from the original weights, as Python does) and Python's configuration errors.

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::glora_test {
namespace {

INSTANTIATE_TEST_SUITE_P(
    Glora, MethodVariants,
    testing::Values(Variant{"glora", false, {{"peft_type", "GLORA"}, {"target_modules", {"lin0", "lin1"}}, {"r", 2}}},
                    Variant{"glora_vector", false,
                            {{"peft_type", "GLORA"}, {"target_modules", {"lin1"}}, {"config_A_B", "vector"},
                             {"config_C", "vector"}, {"config_D_E", "vector"}, {"init_weights", false}}},
                    Variant{"glora_constant", false,
                            {{"peft_type", "GLORA"}, {"target_modules", {"lin0"}}, {"config_A_B", "constant"},
                             {"config_C", "none"}, {"config_D_E", "none"}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Glora, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"GLORA", "emb"}, UnsupportedLayer{"GLORA", "conv1d"}),
                         UnsupportedLayerName());

struct Effective {
  at::Tensor weight, bias;
};

// W0 + W0 * A + B and b0 + b0 * D + E + W0 @ C from an adapter's saved tensors (lora A/B and C, vector D/E).
Effective effective(const peft::StateDict& sd, const at::Tensor& w0, const at::Tensor& b0) {
  auto t = [&](const std::string& key) { return *sd.find("lin." + key); };
  const at::Tensor a = t("glora_A.Xd").mm(t("glora_A.Xu")), b = t("glora_B.Xd").mm(t("glora_B.Xu"));
  const at::Tensor c = t("glora_C.Xd").mm(t("glora_C.Xu"));
  return {w0 + w0 * a + b, b0 + b0 * t("glora_D.X") + t("glora_E.X") + w0.mm(c).squeeze(-1)};
}

TEST(Glora, ForwardAndMergesUseTheOriginalWeights) {
  WarningCapture warnings;
  auto model = seeded_one_linear();
  const at::Tensor x = torch::randn({2, 5});
  const at::Tensor w0 = model->lin->weight.detach().clone(), b0 = model->lin->bias.detach().clone();
  const at::Tensor base = model->forward(x);
  auto config = peft::GloraConfig().r(2).config_D_E("vector").init_weights(false).target_modules({"lin"});
  peft::inject_adapter_in_model(config, model);
  peft::inject_adapter_in_model(config, model, "other");
  const Effective one = effective(peft::get_peft_model_state_dict(*model), w0, b0);
  const Effective two = effective(peft::get_peft_model_state_dict(*model, "other"), w0, b0);
  peft::set_adapter(*model, "default");
  EXPECT_LT(max_abs_diff(model->forward(x), torch::nn::functional::linear(x, one.weight, one.bias)), 1e-5);
  peft::set_adapter(*model, {"default", "other"});
  const at::Tensor both = torch::nn::functional::linear(x, one.weight, one.bias) +
                          torch::nn::functional::linear(x, two.weight, two.bias) - base;
  EXPECT_LT(max_abs_diff(model->forward(x), both), 1e-5);
  // Merging "default", then "other": the second update is computed from W0, not from the merged weight.
  peft::merge_adapter(*model, {"default"});
  EXPECT_LT(max_abs_diff(model->lin->weight, one.weight), 1e-5);
  peft::merge_adapter(*model, {"other"});
  EXPECT_LT(max_abs_diff(model->lin->weight, one.weight + two.weight - w0), 1e-5);
  EXPECT_LT(max_abs_diff(model->lin->bias, one.bias + two.bias - b0), 1e-5);
  EXPECT_LT(max_abs_diff(model->forward(x), both), 1e-4);
  peft::unmerge_adapter(*model);
  EXPECT_LT(max_abs_diff(model->lin->weight, w0), 1e-4);
  EXPECT_LT(max_abs_diff(model->lin->bias, b0), 1e-4);
}

TEST(Glora, ConfigErrorsArePythons) {
  auto message = [](const char* text) { return config_error(nlohmann::json::parse(text)); };

  EXPECT_NE(message(R"({"peft_type": "GLORA", "config_A_B": "full"})")
                .find("Invalid config_A_B value: 'full'. Valid values are: constant, lora, none, vector."),
            std::string::npos);
  EXPECT_NE(message(R"({"peft_type": "GLORA", "config_C": "constant"})")
                .find("Invalid config_C value: 'constant'. Valid values are: lora, none, vector."),
            std::string::npos);
  EXPECT_NE(message(R"({"peft_type": "GLORA", "config_D_E": "lora"})")
                .find("Invalid config_D_E value: 'lora'. Valid values are: constant, none, vector."),
            std::string::npos);
  EXPECT_NE(message(R"({"peft_type": "GLORA", "bias": "lora_only"})").find("Requested bias"), std::string::npos);
  EXPECT_NE(message(R"({"peft_type": "GLORA", "r": 0})").find("`r` should be a positive integer"), std::string::npos);
  EXPECT_EQ(message(R"({"peft_type": "GLORA", "r": 0, "config_A_B": "vector", "config_C": "none"})"), "");
  EXPECT_NE(message(R"({"peft_type": "GLORA", "layers_to_transform": [0]})"), "");
}

}  // namespace
}  // namespace peft_test::glora_test
