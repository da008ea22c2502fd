// PEANuT: the variant suites, and what is special about it: the update is computed from the base weight by a small
// residual network (encoders / decoders stored as ModuleLists, keyed "peanut_encoders.<i>.weight" as Python does),
// merging computes every adapter's update from the weight before the first merge and unmerging restores that weight
// exactly, the initial values follow Python's draws, and Python's config checks.

#include <torch/torch.h>

#include <peft/peft.h>

#include "methods/shared_tensor_checks.h"
#include "support/layers.h"
#include "support/snapshot.h"
#include "support/warnings.h"

namespace peft_test::peanut_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    Peanut, MethodVariants,
    testing::Values(Variant{"peanut", false,
                            {{"peft_type", "PEANUT"}, {"target_modules", kMlpTargets}, {"r", 4}, {"init_weights", false}}},
                    Variant{"peanut_depth2_gelu", false,
                            {{"peft_type", "PEANUT"},
                             {"target_modules", kMlpTargets},
                             {"r", 3},
                             {"depth", 2},
                             {"act_fn", "gelu"},
                             {"scaling", 0.5},
                             {"init_weights", false}}},
                    Variant{"peanut_depth1_tanh", false,
                            {{"peft_type", "PEANUT"},
                             {"target_modules", {"lin1"}},
                             {"r", 5},
                             {"depth", 1},
                             {"act_fn", "tanh"},
                             {"init_weights", false}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Peanut, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"PEANUT", "emb"}, UnsupportedLayer{"PEANUT", "conv1d"}),
                         UnsupportedLayerName());

peft::PeanutConfig config(int64_t depth = 0) {
  return peft::PeanutConfig().r(4).depth(depth).init_weights(false).target_modules({"lin0", "lin1"});
}

TEST(Peanut, HiddenLayersAreModuleListsKeyedAsPythonKeysThem) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(2), model);
  const peft::StateDict state = peft::get_peft_model_state_dict(*model);
  EXPECT_EQ(state.keys(),
            (std::vector<std::string>{"lin0.peanut_A.weight", "lin0.peanut_B.weight", "lin0.peanut_encoders.0.weight",
                                      "lin0.peanut_encoders.1.weight", "lin0.peanut_decoders.0.weight",
                                      "lin0.peanut_decoders.1.weight", "lin1.peanut_A.weight", "lin1.peanut_B.weight",
                                      "lin1.peanut_encoders.0.weight", "lin1.peanut_encoders.1.weight",
                                      "lin1.peanut_decoders.0.weight", "lin1.peanut_decoders.1.weight"}));
  // A maps the weight's output side: (r, out); B back to it.
  EXPECT_EQ(state["lin0.peanut_A.weight"].sizes().vec(), (std::vector<int64_t>{4, 24}));
  EXPECT_EQ(state["lin1.peanut_B.weight"].sizes().vec(), (std::vector<int64_t>{16, 4}));
  EXPECT_TRUE(model->named_parameters().contains("lin0.peanut_encoders.default.1.weight"));
}

// The update by hand, as Python's _compute_delta_weight writes it, for depth 2 and silu.
TEST(Peanut, UpdateFollowsPythonsNetwork) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(2).act_fn("silu").scaling(0.7), model);
  const auto p = model->named_parameters();
  const at::Tensor w = p["lin1.weight"].detach();
  auto lin = [&](const at::Tensor& h, const std::string& key) { return torch::silu(torch::matmul(h, p[key].t())); };
  const at::Tensor h0 = lin(w.t(), "lin1.peanut_A.default.weight");
  const at::Tensor h1 = lin(h0, "lin1.peanut_encoders.default.0.weight");
  const at::Tensor h2 = lin(h1, "lin1.peanut_encoders.default.1.weight");
  const at::Tensor d0 = lin(h2, "lin1.peanut_decoders.default.0.weight") + h1;
  const at::Tensor d1 = lin(d0, "lin1.peanut_decoders.default.1.weight") + h0;
  const at::Tensor delta = (torch::matmul(d1, p["lin1.peanut_B.default.weight"].t()) * 0.7).t();
  const at::Tensor x = torch::randn({5, 24});
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(model->lin1(x), torch::nn::functional::linear(x, w + delta, p["lin1.bias"])), 1e-5);
}

TEST(Peanut, MergedUpdatesComeFromTheWeightBeforeTheFirstMergeAndUnmergeRestoresIt) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(1), model);
  peft::inject_adapter_in_model(config(0).r(2), model, "other");
  const at::Tensor before = model->lin0->weight.detach().clone();
  // Each adapter alone: its update.
  peft::set_adapter(model, "default");
  peft::merge_adapter(model);
  const at::Tensor delta_default = model->lin0->weight.detach() - before;
  peft::unmerge_adapter(model);
  EXPECT_TRUE(torch::equal(model->lin0->weight.detach(), before));
  peft::set_adapter(model, "other");
  peft::merge_adapter(model);
  const at::Tensor delta_other = model->lin0->weight.detach() - before;
  peft::unmerge_adapter(model);
  // One after the other: the second update is still computed from the weight before any merge.
  // (set_adapter would unmerge first, as Python's does.)
  peft::set_adapter(model, "default");
  peft::merge_adapter(model);
  peft::merge_adapter(model, {"other"});
  EXPECT_LT(max_abs_diff(model->lin0->weight.detach(), before + delta_default + delta_other), 1e-5);
  peft::unmerge_adapter(model);
  EXPECT_TRUE(torch::equal(model->lin0->weight.detach(), before));
}

TEST(Peanut, InitialisationFollowsPythonsSeed) {
  WarningCapture warnings;
  expect_python_initialisation("peanut_mlp");  // init_weights=false: every weight kaiming-uniform, in Python's order
}

TEST(Peanut, InitWeightsStartsAsANoOp) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  const at::Tensor base = model->forward(mlp_input());
  peft::inject_adapter_in_model(config(1).init_weights(true), model);
  EXPECT_TRUE(torch::equal(model->named_parameters()["lin0.peanut_B.default.weight"], torch::zeros({24, 4})));
  EXPECT_LT(max_abs_diff(model->forward(mlp_input()), base), 1e-6);
}

TEST(Peanut, ConfigChecksUsePythonsTexts) {
  WarningCapture warnings;
  auto rejects = [](const json& fields, const std::string& text) { expect_config_error("PEANUT", fields, text); };
  rejects({{"r", 0}}, "`r` must be a positive integer.");
  rejects({{"depth", -1}}, "`depth` can only be a non-negative integer.");
  rejects({{"act_fn", "softsign"}}, "Unsupported `act_fn`: softsign. Must be one of ['gelu', 'gelu_10', ");
  rejects({{"act_fn", "xielu"}}, "peft-cpp does not implement it");
  rejects({{"layers_pattern", "blocks"}}, "When `layers_pattern` is specified, `layers_to_transform` must also be specified.");
}

TEST(Peanut, ExcludeModulesAndLayersToTransformSelectLayers) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config().exclude_modules({"lin0"}), model);
  EXPECT_EQ(peft::targeted_module_names(model), std::vector<std::string>{"lin1"});

  const VectorCase c = VectorCase::load("lora_blocks_layers_to_transform");
  VectorModel blocks = base_model(c);
  json j = {{"peft_type", "PEANUT"}, {"r", 2}, {"target_modules", {"fc1", "fc2"}}, {"layers_to_transform", {1}},
            {"layers_pattern", "blocks"}};
  peft::inject_adapter_in_model(*peft::config_from_json_string(j.dump()), blocks);
  EXPECT_EQ(peft::targeted_module_names(blocks),
            (std::vector<std::string>{"encoder.blocks.1.fc1", "encoder.blocks.1.fc2"}));
}

TEST(Peanut, StateDictInjectionRebuildsTheHiddenLayers) {
  WarningCapture warnings;
  Mlp source = seeded_mlp();
  peft::inject_adapter_in_model(config(2), source);
  const peft::StateDict state = peft::get_peft_model_state_dict(*source);
  for (bool low_cpu : {false, true}) {
    Mlp model = seeded_mlp();
    peft::inject_adapter_in_model(config(2), model, "default", low_cpu, state);
    const peft::LoadResult result = peft::set_peft_model_state_dict(*model, state, "default", low_cpu);
    EXPECT_TRUE(result.missing_keys.empty());
    EXPECT_TRUE(result.unexpected_keys.empty());
    torch::NoGradGuard no_grad;
    EXPECT_LT(max_abs_diff(model->forward(mlp_input()), source->forward(mlp_input())), 1e-6) << "low_cpu=" << low_cpu;
  }
}

TEST(Peanut, OfflineMergeMatchesPython) {
  WarningCapture warnings;
  expect_offline_merge_matches("peanut_mlp");
}

}  // namespace
}  // namespace peft_test::peanut_test
