// UniLoRA beyond its cases (unilora_mlp, unilora_save_indices, unilora_gpt2conv, unilora_blocks_layers): the shared
// variant checks, theta_d as one trained tensor shared by every layer and saved once, the index buffers Python's
// seed gives (with and without save_indices), Python's configuration errors, and the checks across adapters.

#include <filesystem>

#include <torch/torch.h>

#include <peft/peft.h>

#include "methods/shared_tensor_checks.h"
#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::unilora_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    UniLora, MethodVariants,
    testing::Values(Variant{"unilora", false,
                            // save_indices: a file without the buffers names no layer, so state-dict injection
                            // (one of the variant checks) needs them (see StateDictInjectionNeedsSavedIndices).
                            {{"peft_type", "UNILORA"}, {"target_modules", kMlpTargets}, {"r", 4},
                             {"theta_d_length", 40}, {"init_theta_d_bound", 0.5}, {"save_indices", true}}},
                    Variant{"unilora_save_indices_dropout", false,
                            {{"peft_type", "UNILORA"},
                             {"target_modules", {"lin1"}},
                             {"r", 3},
                             {"theta_d_length", 17},
                             {"proj_seed", 5},
                             {"save_indices", true},
                             {"unilora_dropout", 0.1},
                             {"init_weights", false}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(UniLora, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"UNILORA", "emb", {{"theta_d_length", 8}}}),
                         UnsupportedLayerName());

peft::UniLoraConfig config() {
  return peft::UniLoraConfig().r(2).theta_d_length(16).init_theta_d_bound(0.5).target_modules({"lin0", "lin1"});
}

TEST(UniLora, ThetaIsOneTrainedTensorSharedByEveryLayerAndSavedOnce) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  const at::Tensor theta = named_parameter(*model, "lin0.unilora_theta_d.default");
  EXPECT_TRUE(same_tensor(theta, named_parameter(*model, "lin1.unilora_theta_d.default")));
  EXPECT_EQ(theta.sizes().vec(), (std::vector<int64_t>{16}));
  EXPECT_TRUE(theta.requires_grad());
  EXPECT_LE(theta.abs().max().item<double>(), 0.5);
  // Without save_indices only theta_d is saved; the buffers are regenerated from proj_seed.
  EXPECT_EQ(peft::get_peft_model_state_dict(*model).keys(), (std::vector<std::string>{"base_model.unilora_theta_d"}));
  EXPECT_EQ(peft::trainable_parameters(model).trainable, 16);
  EXPECT_EQ(named_buffer(*model, "lin0.unilora_indices_A.default").scalar_type(), at::kLong);
  EXPECT_EQ(named_buffer(*model, "lin1.unilora_indices_B.default").sizes().vec(), (std::vector<int64_t>{16, 2}));

  // One gradient for theta_d, summed over the layers that use it.
  model->train();
  model->forward(mlp_input()).sum().backward();
  ASSERT_TRUE(theta.grad().defined());
  EXPECT_GT(theta.grad().abs().sum().item<double>(), 0);
}

TEST(UniLora, IndicesAndScalesArePythons) {
  // save_indices: Python's file holds the buffers; a fresh injection with the same config computes the same ones
  // (numpy's PCG64 from proj_seed), and theta_d from torch.manual_seed(1234) as Python draws it.
  WarningCapture warnings;
  expect_python_initialisation("unilora_save_indices");
}

TEST(UniLora, EveryIndexIsUsedEquallyOftenAndScaledByItsUses) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  // 2 x (16 + 24) + 2 x (24 + 16) = 160 entries over 16 indices: each index 10 times, scale 1 / sqrt(10).
  at::Tensor all = at::cat({named_buffer(*model, "lin0.unilora_indices_A.default").reshape(-1),
                            named_buffer(*model, "lin0.unilora_indices_B.default").reshape(-1),
                            named_buffer(*model, "lin1.unilora_indices_A.default").reshape(-1),
                            named_buffer(*model, "lin1.unilora_indices_B.default").reshape(-1)});
  EXPECT_TRUE(torch::equal(at::bincount(all), at::full({16}, 10, at::kLong)));
  EXPECT_TRUE(torch::allclose(named_buffer(*model, "lin0.unilora_scales_A.default"),
                              at::full({2, 16}, 1 / std::sqrt(10.0))));
}

TEST(UniLora, ConfigChecksUsePythonsTexts) {
  auto rejects = [](const json& fields, const std::string& text) { expect_config_error("UNILORA", fields, text); };
  rejects({{"r", 0}}, "`r` should be a positive integer, got 0.");
  rejects({{"theta_d_length", -3}}, "`theta_d_length` should be a positive integer, got -3.");
  rejects({{"unilora_dropout", 1.5}}, "`unilora_dropout` should be between 0.0 and 1.0, got 1.5.");
  rejects({{"init_theta_d_bound", 0.0}}, "`init_theta_d_bound` should be a positive float, got 0.0.");
  rejects({{"bias", "lora_only"}}, "`bias` should be 'none', 'all', or 'unilora_only', got lora_only.");
  rejects({{"proj_seed", -1}}, "`proj_seed` must be a non-negative integer");
  rejects({{"exclude_modules", {"lin0"}}}, "exclude_modules");
}

TEST(UniLora, AdaptersMustAgreeOnSaveIndicesAndKeepTheirOwnTheta) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  const ModelSnapshot before(*model);
  EXPECT_THROW(peft::inject_adapter_in_model(config().save_indices(true), model, "other"), peft::ConfigError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  peft::inject_adapter_in_model(config().theta_d_length(8).target_modules({"lin1"}), model, "other");
  EXPECT_EQ(named_parameter(*model, "lin1.unilora_theta_d.other").size(0), 8);
  EXPECT_FALSE(same_tensor(named_parameter(*model, "lin1.unilora_theta_d.other"), named_parameter(*model, "lin1.unilora_theta_d.default")));
  peft::delete_adapter(*model, "other");
  const auto named = model->named_parameters();
  EXPECT_EQ(named.find("lin1.unilora_theta_d.other"), nullptr);
}

TEST(UniLora, StateDictInjectionNeedsSavedIndices) {
  // Without save_indices the adapter's state dict holds theta_d only, which names no layer (Python fails too).
  WarningCapture warnings;
  Mlp source = seeded_mlp();
  peft::inject_adapter_in_model(config(), source);
  const peft::StateDict weights = peft::get_peft_model_state_dict(*source);
  Mlp model = seeded_mlp();
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(config().target_modules(peft::TargetModules()), model, "default", false, weights);
    ADD_FAILURE() << "injected from a state dict naming no layer";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("base_model.unilora_theta_d"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  // Injected by the config's targets, the same state dict loads, and the regenerated buffers give the same outputs.
  peft::inject_adapter_in_model(config(), model);
  peft::set_peft_model_state_dict(*model, weights);
  EXPECT_LT(max_abs_diff(model->forward(mlp_input()), source->forward(mlp_input())), 1e-6);
}

TEST(UniLora, OfflineMergeNeedsTheLayersOrTheModel) {
  // With save_indices the file names its layers and merges offline as Python's merge does.
  {
    const VectorCase c = VectorCase::load("unilora_save_indices");
    const auto cfg = peft::load_config((c.dir / "adapter_config.json").string());
    const peft::StateDict adapter = peft::safetensors::load_file((c.dir / "adapter_model.safetensors").string());
    EXPECT_EQ(peft::adapted_module_names(*cfg, adapter), (std::vector<std::string>{"lin0", "lin2"}));
    const peft::OfflineMergeResult merged = peft::merge_into_weights(*cfg, adapter, c.tensors("base.safetensors"));
    const peft::StateDict python = c.tensors("merged_model.safetensors");
    for (const char* key : {"lin0.weight", "lin2.weight"}) {
      ASSERT_TRUE(merged.tensors.contains(key)) << key;
      EXPECT_LT(max_abs_diff(merged.tensors[key], python[key]), 1e-6) << key;
    }
  }
  // Without, the file holds theta_d only: refused, not silently merged into nothing.
  const VectorCase c = VectorCase::load("unilora_mlp");
  const auto cfg = peft::load_config((c.dir / "adapter_config.json").string());
  const peft::StateDict adapter = peft::safetensors::load_file((c.dir / "adapter_model.safetensors").string());
  EXPECT_THROW(peft::merge_into_weights(*cfg, adapter, c.tensors("base.safetensors")), peft::StateDictError);
}

}  // namespace
}  // namespace peft_test::unilora_test
