// BEFT beyond its cases (beft_mlp, beft_mlp_nobias): the shared variant checks, the offset in the forward
// and the bias after merging, and a layer without a bias (Python's warning, the forward, merging refused).

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::beft_test {
namespace {

INSTANTIATE_TEST_SUITE_P(
    Beft, MethodVariants,
    testing::Values(Variant{"beft", false, {{"peft_type", "BEFT"}, {"target_modules", {"lin0", "lin1"}}}},
                    Variant{"beft_random", false,
                            {{"peft_type", "BEFT"}, {"target_modules", {"lin1"}}, {"init_weights", false}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Beft, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"BEFT", "emb"}, UnsupportedLayer{"BEFT", "conv1d"}),
                         UnsupportedLayerName());

TEST(Beft, ForwardAddsTheOffsetAndMergeMovesItIntoTheBias) {
  WarningCapture warnings;
  auto model = seeded_one_linear(5, 6, true);
  const at::Tensor x = torch::randn({2, 5});
  const at::Tensor base = model->forward(x);
  const at::Tensor bias = model->lin->bias.detach().clone();
  peft::inject_adapter_in_model(peft::BeftConfig().target_modules({"lin"}), model);
  EXPECT_TRUE(torch::equal(model->forward(x), base)) << "zero init is a no-op";
  const at::Tensor offset = *peft::get_peft_model_state_dict(*model).find("lin.beft_bias");
  EXPECT_EQ(offset.sizes(), at::IntArrayRef({1, 6}));
  peft::inject_adapter_in_model(peft::BeftConfig().init_weights(false).target_modules({"lin"}), model, "other");
  peft::set_adapter(*model, "other");
  const at::Tensor other = *peft::get_peft_model_state_dict(*model, "other").find("lin.beft_bias");
  EXPECT_LT(max_abs_diff(model->forward(x), base + other.flatten()), 1e-6);
  peft::merge_and_unload(model);
  EXPECT_LT(max_abs_diff(model->lin->bias, bias + other.flatten()), 1e-7);
}

TEST(Beft, LayerWithoutBiasWarnsAndCannotMerge) {
  WarningCapture warnings;
  auto model = seeded_one_linear(5, 6, false);
  const at::Tensor x = torch::randn({2, 5});
  const at::Tensor base = model->forward(x);
  peft::inject_adapter_in_model(peft::BeftConfig().init_weights(false).target_modules({"lin"}), model);
  EXPECT_TRUE(warnings.contains("Detected that the base layer has no bias term"));
  const at::Tensor offset = *peft::get_peft_model_state_dict(*model).find("lin.beft_bias");
  EXPECT_LT(max_abs_diff(model->forward(x), base + offset.flatten()), 1e-6);
  const ModelSnapshot before(*model);
  try {
    peft::merge_adapter(*model);
    ADD_FAILURE() << "merging into a layer without a bias must be refused";
  } catch (const peft::MergeError& e) {
    EXPECT_NE(std::string(e.what()).find("Base layer has no bias, cannot merge bias adapter default"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(Beft, ConfigRefusesFieldsPythonLacks) {
  EXPECT_THROW(peft::config_from_json_string(R"({"peft_type": "BEFT", "layers_to_transform": [0]})"), peft::ConfigError);
  EXPECT_THROW(peft::config_from_json_string(R"({"peft_type": "BEFT", "exclude_modules": ["lin"]})"), peft::ConfigError);
  const auto config = peft::config_from_json_string(R"({"peft_type": "BEFT", "init_weights": false})");
  EXPECT_FALSE(dynamic_cast<const peft::BeftConfig&>(*config).init_weights());
}

}  // namespace
}  // namespace peft_test::beft_test
