// Super-Tuning beyond its cases (supertuning_mlp, supertuning_supra_default, supertuning_no_indices): the
// shared variant checks, the support Python's topk picks, Supra's LoRA term, indices recomputed when a
// checkpoint leaves them out, and Python's configuration errors.

#include <filesystem>

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::supertuning_test {
namespace {

namespace fs = std::filesystem;

INSTANTIATE_TEST_SUITE_P(
    Supertuning, MethodVariants,
    testing::Values(Variant{"supertuning", false,
                            {{"peft_type", "SUPERTUNING"}, {"target_modules", {"lin0", "lin1"}}, {"sparsity", 0.9}}},
                    Variant{"supertuning_supra", false,
                            {{"peft_type", "SUPERTUNING"}, {"target_modules", {"lin1"}}, {"sparsity", 0.95},
                             {"select_top", false}, {"r", 2}, {"lora_alpha", 3.0}, {"init_weights", false}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Supertuning, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"SUPERTUNING", "emb", {{"sparsity", 0.5}}},
                                         UnsupportedLayer{"SUPERTUNING", "conv1d", {{"sparsity", 0.5}}}),
                         UnsupportedLayerName());

TEST(Supertuning, SupportIsTheLargestOrSmallestMagnitudes) {
  WarningCapture warnings;
  for (bool top : {true, false}) {
    auto model = seeded_one_linear();
    const at::Tensor scores = model->lin->weight.detach().abs().flatten();
    peft::inject_adapter_in_model(peft::SupertuningConfig().sparsity(0.8).select_top(top).target_modules({"lin"}), model);
    const peft::StateDict sd = peft::get_peft_model_state_dict(*model);
    const at::Tensor indices = *sd.find("lin.supertuning_indices");
    EXPECT_EQ(indices.scalar_type(), torch::kInt);
    ASSERT_EQ(indices.numel(), 5);  // Python's int(30 * (1 - 0.8)): 5.999... truncated
    EXPECT_TRUE(torch::equal(indices.to(torch::kLong), std::get<1>(torch::topk(scores, 5, -1, top))));
  }
}

TEST(Supertuning, SupraAddsTheScaledLoraTerm) {
  WarningCapture warnings;
  auto model = seeded_one_linear();
  const at::Tensor x = torch::randn({2, 5});
  const at::Tensor w0 = model->lin->weight.detach().clone(), b0 = model->lin->bias.detach().clone();
  peft::inject_adapter_in_model(peft::SupertuningConfig().sparsity(0.5).r(2).init_weights(false).target_modules({"lin"}), model);
  // lora_alpha defaults to 2 r, and the file says so.
  EXPECT_EQ(nlohmann::json::parse(peft::adapter_config(*model, "default")->to_json_string())["lora_alpha"], 4.0);
  const peft::StateDict sd = peft::get_peft_model_state_dict(*model);
  at::Tensor weight = w0.clone().view(-1);
  weight.scatter_add_(0, sd.find("lin.supertuning_indices")->to(torch::kLong), *sd.find("lin.supertuning_values"));
  weight = weight.view_as(w0) + 2.0 * sd.find("lin.supertuning_lora_B.weight")->mm(*sd.find("lin.supertuning_lora_A.weight"));
  EXPECT_LT(max_abs_diff(model->forward(x), torch::nn::functional::linear(x, weight, b0)), 1e-5);
  peft::merge_and_unload(model);
  EXPECT_LT(max_abs_diff(model->lin->weight, weight), 1e-6);
}

TEST(Supertuning, IndicesLeftOutOfTheCheckpointAreRecomputed) {
  WarningCapture warnings;
  auto source = seeded_one_linear();
  const at::Tensor x = torch::randn({2, 5});
  auto config = peft::SupertuningConfig().sparsity(0.7).save_precomputed_indices(false).init_weights(false).target_modules({"lin"});
  peft::inject_adapter_in_model(config, source);
  EXPECT_TRUE(warnings.contains("save_precomputed_indices=False"));
  const at::Tensor adapted = source->forward(x);
  EXPECT_EQ(peft::get_peft_model_state_dict(*source).find("lin.supertuning_indices"), nullptr);
  const fs::path dir = fs::temp_directory_path() / ("peft_supertuning_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  peft::save_adapter(*source, dir.string());
  for (bool low_cpu : {false, true}) {
    auto model = seeded_one_linear();
    peft::LoadAdapterOptions options;
    options.low_cpu_mem_usage = low_cpu;
    const peft::LoadResult result = peft::load_adapter(*model, dir.string(), "default", options);
    EXPECT_TRUE(result.missing_keys.empty());
    EXPECT_LT(max_abs_diff(model->forward(x), adapted), 1e-6) << "low_cpu=" << low_cpu;
  }
  fs::remove_all(dir);
}

TEST(Supertuning, ConfigErrorsArePythons) {
  auto message = [](const char* text) { return config_error(nlohmann::json::parse(text)); };

  EXPECT_NE(message(R"({"peft_type": "SUPERTUNING", "sparsity": 1.0})").find("sparsity must be in [0.0, 1.0), got 1.0"),
            std::string::npos);
  EXPECT_NE(message(R"({"peft_type": "SUPERTUNING", "r": 0})").find("r must be a positive integer or None, got 0"),
            std::string::npos);
  EXPECT_NE(message(R"({"peft_type": "SUPERTUNING", "lora_alpha": 4})").find("lora_alpha is set but r is None"),
            std::string::npos);
  EXPECT_NE(message(R"({"peft_type": "SUPERTUNING", "r": 2, "lora_dropout": 1.0})")
                .find("lora_dropout must be in [0.0, 1.0), got 1.0"),
            std::string::npos);
  EXPECT_NE(message(R"({"peft_type": "SUPERTUNING", "exclude_modules": ["lin"]})"), "");
  // Too few entries for the layer: Python's error, naming the sparsity.
  WarningCapture warnings;
  auto model = seeded_one_linear();
  try {
    peft::inject_adapter_in_model(peft::SupertuningConfig().target_modules({"lin"}), model);
    ADD_FAILURE() << "0.99 of 30 entries leaves none";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("sparsity=0.99 leaves no trainable entries for a weight with 30 elements"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace peft_test::supertuning_test
