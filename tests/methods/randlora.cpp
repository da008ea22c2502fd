// RandLoRA: the variant suites, and what is special about it: the bases randlora_A / randlora_B are one tensor per
// adapter shared by every adapted layer, held by checkpoints under every layer's key (and, in saved files, once more
// as "base_model.randlora_A"), drawn from projection_prng_key exactly as Python draws them (dense, sparse and very
// sparse). What every shared-basis method must do (second adapters, checks across adapters, casts, layer selection,
// misshaped files, offline merge) is in shared_basis_suite.cpp.

#include <filesystem>
#include <fstream>

#include "methods/shared_tensor_checks.h"
#include "support/warnings.h"

namespace peft_test::randlora_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    RandLora, MethodVariants,
    testing::Values(Variant{"randlora", false,
                            {{"peft_type", "RANDLORA"}, {"target_modules", kMlpTargets}, {"r", 4}, {"randlora_alpha", 8},
                             {"init_weights", false}}},
                    Variant{"randlora_sparse", false,
                            {{"peft_type", "RANDLORA"},
                             {"target_modules", kMlpTargets},
                             {"r", 5},
                             {"sparse", true},
                             {"init_weights", false},
                             {"randlora_dropout", 0.1}}},
                    Variant{"randlora_very_sparse_regenerated", false,
                            {{"peft_type", "RANDLORA"},
                             {"target_modules", kMlpTargets},
                             {"r", 7},
                             {"very_sparse", true},
                             {"save_projection", false},
                             {"projection_prng_key", 5},
                             {"randlora_alpha", 3},
                             {"init_weights", false}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(RandLora, UnsupportedLayers, testing::Values(UnsupportedLayer{"RANDLORA", "emb"}),
                         UnsupportedLayerName());

peft::RandLoraConfig config(int64_t r = 4) {
  return peft::RandLoraConfig().r(r).randlora_alpha(8).init_weights(false).target_modules({"lin0", "lin1"});
}

std::vector<std::string> sorted_keys(const peft::StateDict& state_dict) {
  std::vector<std::string> keys = state_dict.keys();
  std::sort(keys.begin(), keys.end());
  return keys;
}

fs::path temp_dir(const std::string& name) { return fresh_temp_dir("randlora", name); }

TEST(RandLora, BasesAreOneTensorSharedByEveryLayerAndHeldUnderEveryLayersKey) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  // Sized by the largest layer: lin0 is 16 -> 24, lin1 24 -> 16, so (24, 24): 6 bases of rank 4.
  const at::Tensor a0 = named_buffer(*model, "lin0.randlora_A.default");
  EXPECT_TRUE(same_tensor(a0, named_buffer(*model, "lin1.randlora_A.default")));
  EXPECT_TRUE(same_tensor(named_buffer(*model, "lin0.randlora_B.default"), named_buffer(*model, "lin1.randlora_B.default")));
  EXPECT_EQ(a0.sizes().vec(), (std::vector<int64_t>{4, 1, 24}));
  EXPECT_EQ(named_buffer(*model, "lin0.randlora_B.default").sizes().vec(), (std::vector<int64_t>{24, 6, 4}));
  EXPECT_EQ(named_parameter(*model, "lin0.randlora_lambda.default").sizes().vec(), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(named_parameter(*model, "lin0.randlora_gamma.default").sizes().vec(), (std::vector<int64_t>{4, 16}));
  EXPECT_FALSE(a0.requires_grad());

  // Python's get_peft_model_state_dict on an injected model: every layer's reference, no model-level key.
  const peft::StateDict state = peft::get_peft_model_state_dict(*model);
  EXPECT_EQ(state.keys(), (std::vector<std::string>{"lin0.randlora_lambda", "lin0.randlora_gamma", "lin0.randlora_A",
                                                    "lin0.randlora_B", "lin1.randlora_lambda", "lin1.randlora_gamma",
                                                    "lin1.randlora_A", "lin1.randlora_B"}));
  EXPECT_TRUE(same_tensor(state["lin1.randlora_A"], a0));

  // save_pretrained's file: the layer keys prefixed, plus the tuner's own entries as they are.
  const fs::path dir = temp_dir("saved");
  peft::save_adapter(*model, dir.string());
  const peft::StateDict saved = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
  EXPECT_EQ(sorted_keys(saved),
            (std::vector<std::string>{"base_model.model.lin0.randlora_A", "base_model.model.lin0.randlora_B",
                                      "base_model.model.lin0.randlora_gamma", "base_model.model.lin0.randlora_lambda",
                                      "base_model.model.lin1.randlora_A", "base_model.model.lin1.randlora_B",
                                      "base_model.model.lin1.randlora_gamma", "base_model.model.lin1.randlora_lambda",
                                      "base_model.randlora_A", "base_model.randlora_B"}));
  EXPECT_TRUE(torch::equal(saved["base_model.randlora_B"], named_buffer(*model, "lin0.randlora_B.default")));
}

TEST(RandLora, EitherFormLoadsAndEveryLayerGetsTheSameNewBases) {
  WarningCapture warnings;
  Mlp source = seeded_mlp();
  peft::inject_adapter_in_model(config(), source);
  peft::StateDict inject_style;
  for (const auto& item : peft::get_peft_model_state_dict(*source)) inject_style.insert(item.key(), item.value() + 0.5);
  peft::StateDict file_style;
  for (const auto& item : inject_style) file_style.insert("base_model.model." + item.key(), item.value());
  file_style.insert("base_model.randlora_A", inject_style["lin0.randlora_A"]);
  file_style.insert("base_model.randlora_B", inject_style["lin0.randlora_B"]);
  for (const peft::StateDict* state : {&inject_style, &file_style}) {
    for (bool low_cpu : {false, true}) {
      Mlp model = seeded_mlp();
      peft::inject_adapter_in_model(config(), model, "default", low_cpu);
      if (low_cpu) EXPECT_TRUE(named_buffer(*model, "lin0.randlora_A.default").device().is_meta());
      const peft::LoadResult result = peft::set_peft_model_state_dict(*model, *state, "default", low_cpu);
      EXPECT_TRUE(result.missing_keys.empty()) << result.missing_keys.front();
      EXPECT_TRUE(result.unexpected_keys.empty()) << result.unexpected_keys.front();
      for (const char* name : {"randlora_A", "randlora_B"}) {
        const at::Tensor t0 = named_buffer(*model, std::string("lin0.") + name + ".default");
        const at::Tensor t1 = named_buffer(*model, std::string("lin1.") + name + ".default");
        EXPECT_TRUE(same_tensor(t0, t1)) << name << " low_cpu=" << low_cpu;
        EXPECT_TRUE(torch::equal(t0, inject_style[std::string("lin0.") + name])) << name << " low_cpu=" << low_cpu;
      }
      torch::NoGradGuard no_grad;
      Mlp reference = seeded_mlp();
      peft::inject_adapter_in_model(config(), reference);
      peft::set_peft_model_state_dict(*reference, inject_style);
      EXPECT_LT(max_abs_diff(model->forward(mlp_input()), reference->forward(mlp_input())), 1e-6);
    }
  }
  // A layer's key missing is reported; the model-level one is never expected.
  peft::StateDict partial;
  for (const auto& item : inject_style) {
    if (item.key() != "lin1.randlora_B") partial.insert(item.key(), item.value());
  }
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  EXPECT_EQ(peft::set_peft_model_state_dict(*model, partial).missing_keys, std::vector<std::string>{"lin1.randlora_B"});
}

TEST(RandLora, InitialValuesFollowPython) {
  WarningCapture warnings;
  for (bool init : {true, false}) {
    Mlp model = seeded_mlp();
    torch::manual_seed(3);
    peft::inject_adapter_in_model(config().init_weights(init), model);
    torch::manual_seed(3);
    const at::Tensor lambda0 = torch::randn({4, 4});
    const at::Tensor lambda1 = torch::randn({4, 4});
    // lin1: 24 -> 16, so 4 bases over 16.
    if (init) {
      EXPECT_TRUE(torch::equal(named_parameter(*model, "lin1.randlora_lambda.default"), torch::zeros({4, 4})));
      EXPECT_TRUE(torch::equal(named_parameter(*model, "lin1.randlora_gamma.default"), torch::full({4, 16}, 1.0 / 16)));
    } else {
      EXPECT_TRUE(torch::equal(named_parameter(*model, "lin0.randlora_lambda.default"), lambda0));
      EXPECT_TRUE(torch::equal(named_parameter(*model, "lin1.randlora_lambda.default"), lambda1));
      EXPECT_TRUE(torch::equal(named_parameter(*model, "lin1.randlora_gamma.default"), torch::ones({4, 16}) / 24));
    }
  }
}

TEST(RandLora, SparseBasesAreTernaryAndNormalised) {
  WarningCapture warnings;
  for (bool very : {false, true}) {
    Mlp model = seeded_mlp();
    peft::inject_adapter_in_model(very ? config().very_sparse(true) : config().sparse(true), model);
    const at::Tensor b = named_buffer(*model, "lin0.randlora_B.default");
    const at::Tensor levels = std::get<0>(at::_unique(b));
    EXPECT_EQ(levels.numel(), 3) << levels;
    EXPECT_NEAR(b.std().item<double>(), 1.0, 1e-5);
    // Python's thresholds: -1 below 1 / (2 sparsity), so about 1/6 (sparse) or 1 / (2 sqrt(24)) (very sparse).
    const double negative = (b < 0).to(torch::kDouble).mean().item<double>();
    EXPECT_NEAR(negative, very ? 1 / (2 * std::sqrt(24.0)) : 1.0 / 6, 0.05);
  }
}

}  // namespace
}  // namespace peft_test::randlora_test
