// FRoD beyond its cases (frod_mlp, frod_blocks_layers, frod_gpt2conv): the shared variant checks, Python's
// initialisation from the same seed (bases, sparse patterns, solved lambda_l, random values), the per-category
// sharing of the bases and their model-level keys, the offline merge, and Python's configuration and load errors.

#include <torch/torch.h>

#include <peft/peft.h>

#include "methods/shared_tensor_checks.h"
#include "support/method_variants.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::frod_test {
namespace {

INSTANTIATE_TEST_SUITE_P(
    Frod, MethodVariants,
    testing::Values(Variant{"frod", false,
                            {{"peft_type", "FROD"}, {"target_modules", {"lin0", "lin1"}}, {"init_weights", false},
                             {"sparse_rate", 0.05}}},
                    Variant{"frod_no_projection", false,
                            {{"peft_type", "FROD"}, {"target_modules", {"lin0", "lin1"}}, {"init_weights", false},
                             {"save_projection", false}, {"frod_dropout", 0.1}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Frod, UnsupportedLayers, testing::Values(UnsupportedLayer{"FROD", "emb"}),
                         UnsupportedLayerName());

TEST(Frod, InitialisationIsPythons) {
  WarningCapture warnings;
  expect_python_initialisation("frod_mlp");
}

TEST(Frod, ASecondAdapterTakesTheCategoriesOfTheFirst) {
  // Python's add_adapter: a category the model already has keeps the first adapter's V and pattern (even with
  // another sparse_rate); from the same seed both adapters are Python's.
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("frod_mlp");
  VectorModel model = base_model(c);
  torch::manual_seed(1234);
  peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), *model);
  peft::inject_adapter_in_model(*peft::load_config((c.dir / "other" / "adapter_config.json").string()), *model, "other");
  for (const char* adapter : {"default", "other"}) {
    const std::string file = std::string(adapter) == "default" ? "peft_state_dict.safetensors" : "peft_state_dict_other.safetensors";
    const peft::StateDict python = c.tensors(file);
    const peft::StateDict ours = peft::get_peft_model_state_dict(*model, adapter);
    ASSERT_EQ(ours.size(), python.size()) << adapter;
    for (const auto& item : python) EXPECT_TRUE(torch::equal(ours[item.key()], item.value())) << adapter << ": " << item.key();
  }
  EXPECT_TRUE(same_tensor(named_buffer(*model, "lin1.frod_s_indices.default"), named_buffer(*model, "lin1.frod_s_indices.other")));

  VectorModel denser = base_model(c);
  peft::inject_adapter_in_model(peft::FrodConfig().target_modules({"lin1"}), *denser);
  peft::inject_adapter_in_model(peft::FrodConfig().target_modules({"lin1", "lin2"}).sparse_rate(0.05), *denser, "other");
  EXPECT_EQ(named_buffer(*denser, "lin1.frod_s_indices.other").size(1), 4);   // the first adapter's int(400 * 0.01)
  EXPECT_EQ(named_buffer(*denser, "lin2.frod_s_indices.other").size(1), 20);  // a new category: int(400 * 0.05)
}

TEST(Frod, LayersOfOneCategoryShareTheirBases) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("frod_blocks_layers");
  VectorModel model = base_model(c);
  peft::load_adapter(*model, c.dir.string());
  for (const char* name : {"frod_V", "frod_s_indices", "frod_s_size"}) {
    for (const char* category : {"fc1", "fc2"}) {
      const std::string first = std::string("encoder.blocks.0.") + category + "." + name + ".default";
      for (const char* block : {"1", "3"}) {
        const std::string other = std::string("encoder.blocks.") + block + "." + category + "." + name + ".default";
        EXPECT_TRUE(same_tensor(named_buffer(*model, first), named_buffer(*model, other))) << other;
      }
    }
  }
  EXPECT_FALSE(same_tensor(named_buffer(*model, "encoder.blocks.0.fc1.frod_V.default"),
                           named_buffer(*model, "encoder.blocks.0.fc2.frod_V.default")));
  // Block 2 is left out (layers_to_transform); U is the layer's own and never saved.
  const peft::StateDict sd = peft::get_peft_model_state_dict(*model);
  EXPECT_TRUE(sd.contains("base_model.frod_V.fc1"));
  EXPECT_TRUE(sd.contains("base_model.frod_s_indices.fc2"));
  for (const auto& item : sd) {
    EXPECT_EQ(item.key().find("blocks.2."), std::string::npos) << item.key();
    EXPECT_EQ(item.key().find("frod_U"), std::string::npos) << item.key();
  }
}

TEST(Frod, OfflineMergeMatchesPython) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("frod_mlp");
  const auto config = peft::load_config((c.dir / "adapter_config.json").string());
  const peft::StateDict adapter = peft::safetensors::load_file((c.dir / "adapter_model.safetensors").string());
  EXPECT_EQ(peft::adapted_module_names(*config, adapter), (std::vector<std::string>{"lin0", "lin1", "lin2"}));
  const peft::OfflineMergeResult merged = peft::merge_into_weights(*config, adapter, c.tensors("base.safetensors"));
  const peft::StateDict python = c.tensors("merged_model.safetensors");
  for (const char* key : {"lin0.weight", "lin1.weight", "lin2.weight"}) {
    ASSERT_TRUE(merged.tensors.contains(key)) << key;
    EXPECT_LT(max_abs_diff(merged.tensors[key], python[key]), 1e-5) << key;
  }
}

TEST(Frod, ConfigErrorsArePythons) {
  expect_config_error("FROD", {{"sparse_rate", 1.5}}, "`sparse_rate` should be between 0 and 1, got 1.5.");
  expect_config_error("FROD", {{"sparse_rate", -0.1}}, "`sparse_rate` should be between 0 and 1, got -0.1.");
  expect_config_error("FROD", {{"layers_pattern", "blocks"}},
                      "When `layers_pattern` is specified, `layers_to_transform` must also be specified.");
  EXPECT_NE(config_error({{"peft_type", "FROD"}, {"exclude_modules", {"lin0"}}}), "");
  expect_config_error("FROD", {{"bias", "lora_only"}}, "");

  WarningCapture warnings;
  auto second_adapter_error = [](const peft::FrodConfig& second) {
    Mlp model = seeded_mlp();
    peft::inject_adapter_in_model(peft::FrodConfig().target_modules({"lin0"}), model);
    try {
      peft::inject_adapter_in_model(second, model, "other");
    } catch (const peft::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(second_adapter_error(peft::FrodConfig().target_modules({"lin1"}).projection_prng_key(3))
                .find("FRoD projection initialization key must be the same for all adapters. Got "
                      "config.projection_prng_key=3 but previous config had 0."),
            std::string::npos);
  EXPECT_NE(second_adapter_error(peft::FrodConfig().target_modules({"lin1"}).save_projection(false))
                .find("FRoD projection weights must be saved for all adapters or none, but got multiple different "
                      "values: [False, True]"),
            std::string::npos);
}

TEST(Frod, MissingProjectionsAreRefusedOnLoad) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("frod_mlp");
  peft::StateDict without;
  for (const auto& item : c.tensors("peft_state_dict.safetensors")) {
    if (item.key().rfind("base_model.", 0) != 0) without.insert(item.key(), item.value());
  }
  VectorModel model = base_model(c);
  peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), *model);
  try {
    peft::set_peft_model_state_dict(*model, without);
    ADD_FAILURE() << "loaded without the projections";
  } catch (const peft::StateDictError& e) {
    EXPECT_NE(std::string(e.what()).find("Specified to load FRoD projection tensors from state dictionary however "
                                         "they were not present."),
              std::string::npos)
        << e.what();
  }
}

TEST(Frod, TheForwardReconstructsTheWeight) {
  // W' = U (S + diag(lambda_l)) V^T replaces W; with dropout in training the base output of the dropped-out input
  // is swapped for W' of it (Python's path), so eval and the merged weight agree.
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  const at::Tensor x = mlp_input();
  const at::Tensor base = model->forward(x);
  peft::inject_adapter_in_model(peft::FrodConfig().target_modules({"lin0", "lin1"}), model);
  // Default init: W' equals W up to the solve's rounding.
  EXPECT_LT(max_abs_diff(model->forward(x), base), 1e-5);
  peft::inject_adapter_in_model(peft::FrodConfig().target_modules({"lin0", "lin1"}).init_weights(false).frod_dropout(0.2),
                                model, "other");
  peft::set_adapter(*model, "other");
  const at::Tensor adapted = model->forward(x);
  EXPECT_GT(max_abs_diff(adapted, base), 1e-3);
  model->train();
  torch::manual_seed(0);
  EXPECT_EQ(model->forward(x).sizes(), adapted.sizes());
  model->eval();
  peft::merge_adapter(*model);
  EXPECT_LT(max_abs_diff(model->forward(x), adapted), 1e-5);
  peft::unmerge_adapter(*model);
  EXPECT_LT(max_abs_diff(model->forward(x), adapted), 1e-5);
  peft::DisabledAdapters off(*model);
  EXPECT_LT(max_abs_diff(model->forward(x), base), 1e-6);
}

}  // namespace
}  // namespace peft_test::frod_test
