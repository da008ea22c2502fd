// TinyLoRA beyond its cases (tinylora_mlp, tinylora_tying_no_projection, tinylora_blocks_layers, tinylora_gpt2conv,
// tinylora_embedding): the shared variant checks, the trained vectors as one tensor (a row per group of layers)
// shared by every layer and saved as Python's per-group keys, the initialisation Python's seeds give, Python's
// configuration errors, the checks across adapters and on load, and the layers it refuses.

#include <torch/torch.h>

#include <peft/peft.h>

#include "methods/shared_tensor_checks.h"
#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::tinylora_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    TinyLora, MethodVariants,
    testing::Values(Variant{"tinylora", false,
                            {{"peft_type", "TINYLORA"}, {"target_modules", kMlpTargets}, {"r", 3}, {"u", 5},
                             {"init_weights", "uniform"}, {"init_v_bound", 0.5}}},
                    Variant{"tinylora_tied_dropout_no_projection", false,
                            {{"peft_type", "TINYLORA"},
                             {"target_modules", kMlpTargets},
                             {"r", 2},
                             {"u", 3},
                             {"weight_tying", 1.0},
                             {"save_projection", false},
                             {"projection_seed", 3},
                             {"tinylora_dropout", 0.1},
                             {"init_weights", "uniform"},
                             {"init_v_bound", 0.5}}}),
    VariantName());

peft::TinyLoraConfig config() {
  return peft::TinyLoraConfig().r(2).u(4).init_weights("uniform").init_v_bound(0.5).target_modules({"lin0", "lin1"});
}

TEST(TinyLora, VectorsAreOneTrainedTensorSharedByEveryLayerAndSavedPerGroup) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  const at::Tensor v = named_parameter(*model, "lin0.tinylora_v.default");
  EXPECT_TRUE(same_tensor(v, named_parameter(*model, "lin1.tinylora_v.default")));
  EXPECT_EQ(v.sizes().vec(), (std::vector<int64_t>{2, 4}));  // weight_tying 0: one row per layer
  EXPECT_TRUE(v.requires_grad());
  EXPECT_EQ(peft::trainable_parameters(model).trainable, 8);
  EXPECT_EQ(named_buffer(*model, "lin0.tinylora_A.default").sizes().vec(), (std::vector<int64_t>{2, 16}));
  EXPECT_EQ(named_buffer(*model, "lin1.tinylora_B.default").sizes().vec(), (std::vector<int64_t>{16, 2}));
  EXPECT_EQ(named_buffer(*model, "lin1.tinylora_P.default").sizes().vec(), (std::vector<int64_t>{4, 2, 2}));
  const peft::StateDict saved = peft::get_peft_model_state_dict(*model);
  std::vector<std::string> keys = saved.keys();
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"base_model.tinylora_v.0", "base_model.tinylora_v.1", "lin0.tinylora_A",
                                            "lin0.tinylora_B", "lin0.tinylora_P", "lin1.tinylora_A", "lin1.tinylora_B",
                                            "lin1.tinylora_P"}));
  EXPECT_TRUE(torch::equal(saved["base_model.tinylora_v.1"], v[1]));

  // Each layer trains its own row.
  model->train();
  model->forward(mlp_input()).sum().backward();
  ASSERT_TRUE(v.grad().defined());
  EXPECT_GT(v.grad()[0].abs().sum().item<double>(), 0);
  EXPECT_GT(v.grad()[1].abs().sum().item<double>(), 0);
}

TEST(TinyLora, WeightTyingGroupsLayersAsPythonDoes) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config().weight_tying(1.0), model);
  EXPECT_EQ(named_parameter(*model, "lin0.tinylora_v.default").sizes().vec(), (std::vector<int64_t>{1, 4}));
  // Both layers use the one vector: its gradient sums theirs.
  model->train();
  model->forward(mlp_input()).sum().backward();
  EXPECT_GT(named_parameter(*model, "lin0.tinylora_v.default").grad().abs().sum().item<double>(), 0);
  EXPECT_EQ(peft::get_peft_model_state_dict(*model).keys().size(), 7u);
}

TEST(TinyLora, InitialisationIsPythons) {
  // Python's files hold the SVD factors, the projections (projection_seed + the layer's index) and the vectors drawn
  // after torch.manual_seed(1234); a fresh injection of the same config computes the same ones.
  WarningCapture warnings;
  for (const char* name : {"tinylora_blocks_layers", "tinylora_gpt2conv", "tinylora_embedding"}) {
    const VectorCase c = VectorCase::load(name);
    VectorModel model = base_model(c);
    torch::manual_seed(1234);
    peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), model);
    const peft::StateDict python = c.tensors("peft_state_dict.safetensors");
    const peft::StateDict ours = peft::get_peft_model_state_dict(*model);
    ASSERT_EQ(ours.size(), python.size()) << name;
    for (const auto& item : python) {
      ASSERT_TRUE(ours.contains(item.key())) << name << " " << item.key();
      // LAPACK may differ in the last bits of the SVD; the seeded draws are exact.
      const bool svd = item.key().find("tinylora_A") != std::string::npos || item.key().find("tinylora_B") != std::string::npos;
      if (svd) {
        EXPECT_LT(max_abs_diff(ours[item.key()], item.value()), 1e-5) << name << " " << item.key();
      } else {
        EXPECT_TRUE(torch::equal(ours[item.key()], item.value())) << name << " " << item.key();
      }
    }
  }
}

TEST(TinyLora, RegeneratedProjectionsGivePythonsOutput) {
  // save_projection=false: the file lacks P; the injection's draws from projection_seed give Python's output, and
  // loading warns as Python does.
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("tinylora_tying_no_projection");
  VectorModel model = base_model(c);
  peft::load_adapter(*model, c.dir.string());
  EXPECT_TRUE(warnings.contains("relying on PRNG initialisation to restore these projections"));
  EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output.safetensors")), 1e-5);
  EXPECT_EQ(named_parameter(*model, "encoder.blocks.0.fc1.tinylora_v.default").size(0), 2);  // round(2.5) = 2
}

TEST(TinyLora, ConfigChecksUsePythonsTexts) {
  auto rejects = [](const json& fields, const std::string& text) { expect_config_error("TINYLORA", fields, text); };
  rejects({{"r", 0}}, "`r` should be a positive integer value but the value passed is 0");
  rejects({{"u", -2}}, "`u` should be a positive integer value but the value passed is -2");
  rejects({{"weight_tying", 1.5}}, "`weight_tying` should be a float between 0.0 and 1.0 but the value passed is 1.5");
  rejects({{"weight_tying", -0.1}}, "`weight_tying` should be a float between 0.0 and 1.0 but the value passed is -0.1");
  rejects({{"bias", "lora_only"}}, "bias");
  rejects({{"init_weights", "gaussian"}}, "init_weights");
  rejects({{"exclude_modules", {"lin0"}}}, "exclude_modules");
  rejects({{"layers_pattern", "blocks"}}, "layers_to_transform");
  EXPECT_EQ(config_error({{"peft_type", "TINYLORA"}, {"target_modules", kMlpTargets}, {"init_weights", "uniform"},
                          {"weight_tying", 0.5}, {"projection_seed", 0}}),
            "");
}

TEST(TinyLora, NotSavingTheProjectionsWarnsAsPythonDoes) {
  WarningCapture warnings;
  config().save_projection(false).validate();
  EXPECT_TRUE(warnings.contains("Specified to not save projection tensors P within the state dictionary"));
}

TEST(TinyLora, AdaptersMustAgreeOnSaveProjectionAndKeepTheirOwnVectors) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(config().save_projection(false), model, "other");
    ADD_FAILURE() << "mixed save_projection accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("TinyLoRA projection tensors must be saved for all adapters or none"),
              std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  peft::inject_adapter_in_model(config().target_modules({"lin1"}), model, "other");
  EXPECT_EQ(named_parameter(*model, "lin1.tinylora_v.other").sizes().vec(), (std::vector<int64_t>{1, 4}));
  EXPECT_FALSE(same_tensor(named_parameter(*model, "lin1.tinylora_v.other"),
                           named_parameter(*model, "lin1.tinylora_v.default")));
  // "other" has one target: its index is 0, so its P is drawn from projection_seed itself, as lin0's of "default".
  EXPECT_TRUE(torch::equal(named_buffer(*model, "lin1.tinylora_P.other"), named_buffer(*model, "lin0.tinylora_P.default")));
  EXPECT_FALSE(torch::equal(named_buffer(*model, "lin1.tinylora_P.other"), named_buffer(*model, "lin1.tinylora_P.default")));
  peft::delete_adapter(*model, "other");
  const auto named = model->named_parameters();
  EXPECT_EQ(named.find("lin1.tinylora_v.other"), nullptr);
}

TEST(TinyLora, AFileWithAGapInItsVectorsIsRefused) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("tinylora_mlp");
  VectorModel model = base_model(c);
  peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), model);
  peft::StateDict weights = c.tensors("peft_state_dict.safetensors");
  peft::StateDict gap;
  for (const auto& item : weights) {
    if (item.key() != "base_model.tinylora_v.1") gap.insert(item.key(), item.value());
  }
  const ModelSnapshot before(*model);
  EXPECT_THROW(peft::set_peft_model_state_dict(*model, gap), peft::StateDictError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  // The vectors of another group count are refused by their shape.
  peft::StateDict fewer;
  for (const auto& item : weights) {
    if (item.key() != "base_model.tinylora_v.2") fewer.insert(item.key(), item.value());
  }
  EXPECT_THROW(peft::set_peft_model_state_dict(*model, fewer), peft::StateDictError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(TinyLora, Conv1DMatchesTheLinearForm) {
  expect_conv1d_matches_linear_form(
      peft::TinyLoraConfig().r(3).u(4).init_weights("uniform").init_v_bound(0.5).target_modules({"lin"}));
}

TEST(TinyLora, ConvolutionsAreRefusedNamingTheLayer) {
  WarningCapture warnings;
  ConvNet model;
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(peft::TinyLoraConfig().target_modules({"conv"}), model);
    ADD_FAILURE() << "a Conv2d was adapted";
  } catch (const peft::UnsupportedLayerError& e) {
    const std::string text = e.what();
    EXPECT_NE(text.find("is not supported"), std::string::npos) << text;
    EXPECT_NE(text.find("'conv'"), std::string::npos) << text;
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(TinyLora, StateDictInjectionAdaptsTheLayersItNames) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("tinylora_blocks_layers");
  VectorModel model = base_model(c);
  auto cfg = peft::load_config((c.dir / "adapter_config.json").string());
  const peft::StateDict weights = c.tensors("peft_state_dict.safetensors");
  peft::inject_adapter_in_model(*cfg, model, "default", /*low_cpu_mem_usage=*/true, weights);
  peft::set_peft_model_state_dict(*model, weights, "default", /*low_cpu_mem_usage=*/true);
  EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output.safetensors")), 1e-5);
}

TEST(TinyLora, OfflineMergeMatchesPython) {
  const VectorCase c = VectorCase::load("tinylora_blocks_layers");
  const auto cfg = peft::load_config((c.dir / "adapter_config.json").string());
  const peft::StateDict adapter = peft::safetensors::load_file((c.dir / "adapter_model.safetensors").string());
  const peft::OfflineMergeResult merged = peft::merge_into_weights(*cfg, adapter, c.tensors("base.safetensors"));
  const peft::StateDict python = c.tensors("merged_model.safetensors");
  int checked = 0;
  for (const auto& item : merged.tensors) {
    ASSERT_TRUE(python.contains(item.key())) << item.key();
    EXPECT_LT(max_abs_diff(item.value(), python[item.key()]), 1e-6) << item.key();
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

}  // namespace
}  // namespace peft_test::tinylora_test
