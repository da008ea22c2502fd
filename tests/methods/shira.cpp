// SHiRA beyond its vectors (shira_mlp): the shared variant checks, Python's default-seed mask, mask
// functions of one's own, masks known only from a checkpoint, the int32 indices in files and state dicts,
// and Python's configuration errors.

#include <filesystem>

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::shira_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    Shira, MethodVariants,
    testing::Values(Variant{"shira", false,
                            {{"peft_type", "SHIRA"}, {"target_modules", {"lin0", "lin1"}}, {"r", 2}, {"init_weights", false}}},
                    Variant{"shira_seeded", false,
                            {{"peft_type", "SHIRA"}, {"target_modules", {"lin1"}}, {"r", 1}, {"random_seed", 3}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Shira, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"SHIRA", "emb"}, UnsupportedLayer{"SHIRA", "conv1d"}),
                         UnsupportedLayerName());

const at::Tensor& input() {
  static const at::Tensor x = torch::randn({2, 5}, torch::Generator(at::detail::createCPUGenerator(11)));
  return x;
}

// By value: the state dict it comes from is a temporary.
at::Tensor indices_of(const OneLinear& model) {
  return *peft::get_peft_model_state_dict(*model).find("lin.shira_indices");
}

/// The mask function of the test: the first `r * (in + out)` entries of the weight in row-major order.
at::Tensor leading_entries(const torch::nn::Module& layer, int64_t r) {
  const auto& linear = dynamic_cast<const torch::nn::LinearImpl&>(layer);
  const int64_t out = linear.options.out_features(), in = linear.options.in_features();
  at::Tensor mask = torch::zeros({out * in});
  mask.narrow(0, 0, r * (in + out)).fill_(1.0);
  return mask.view({out, in});
}

TEST(Shira, UnseededMaskIsPythonsDefaultGeneratorDraw) {
  WarningCapture warnings;
  auto model = seeded_one_linear();
  peft::inject_adapter_in_model(peft::ShiraConfig().r(1).target_modules({"lin"}), model);
  // Python: ShiraConfig(r=1) on nn.Linear(5, 6), torch.Generator() left at its default seed.
  const at::Tensor expected = torch::tensor({0, 0, 0, 0, 1, 3, 3, 4, 4, 5, 5, 0, 2, 3, 4, 3, 1, 4, 1, 3, 3, 4},
                                            torch::kInt).view({2, 11});
  EXPECT_TRUE(torch::equal(indices_of(model), expected)) << indices_of(model);
  EXPECT_EQ(indices_of(model).scalar_type(), torch::kInt);
  // The public mask function gives the same positions.
  const at::Tensor mask = peft::shira_random_mask(*model->lin, 1);
  EXPECT_EQ(mask.scalar_type(), torch::kBool);
  EXPECT_TRUE(torch::equal(torch::nonzero(mask).t().to(torch::kInt), expected));
}

TEST(Shira, ForwardAndMergeAddTheEntriesToTheWeight) {
  WarningCapture warnings;
  auto model = seeded_one_linear();
  const at::Tensor weight = model->lin->weight.detach().clone();
  const at::Tensor bias = model->lin->bias.detach().clone();
  peft::inject_adapter_in_model(peft::ShiraConfig().r(1).random_seed(5).init_weights(false).target_modules({"lin"}), model);
  const peft::StateDict adapter = peft::get_peft_model_state_dict(*model);
  const at::Tensor indices = adapter.find("lin.shira_indices")->to(torch::kLong);
  at::Tensor expected_weight = weight.clone();
  expected_weight.index_put_({indices[0], indices[1]}, *adapter.find("lin.shira_weight"), /*accumulate=*/true);
  EXPECT_LT(max_abs_diff(model->forward(input()), torch::nn::functional::linear(input(), expected_weight, bias)), 1e-6);
  peft::merge_and_unload(model);
  EXPECT_LT(max_abs_diff(model->lin->weight, expected_weight), 1e-7);
}

TEST(Shira, MaskFunctionOfOnesOwnIsUsedAndNotSaved) {
  WarningCapture warnings;
  auto model = seeded_one_linear();
  auto config = peft::ShiraConfig().r(1).mask_type("leading").mask_fn(leading_entries).init_weights(false).target_modules({"lin"});
  peft::inject_adapter_in_model(config, model);
  EXPECT_FALSE(warnings.contains("is not recognized")) << "a mask function was given";
  const at::Tensor expected = torch::stack({torch::div(torch::arange(11), 5, "floor"), torch::arange(11) % 5}).to(torch::kInt);
  EXPECT_TRUE(torch::equal(indices_of(model), expected)) << indices_of(model);
  const std::string text = peft::adapter_config(*model, "default")->to_json_string();
  EXPECT_EQ(json::parse(text)["mask_type"], "leading");
  EXPECT_EQ(text.find("mask_fn"), std::string::npos);
}

TEST(Shira, MaskOnlyInTheCheckpointLoadsFromIt) {
  WarningCapture warnings;
  auto source = seeded_one_linear();
  peft::inject_adapter_in_model(
      peft::ShiraConfig().r(1).mask_type("leading").mask_fn(leading_entries).init_weights(false).target_modules({"lin"}),
      source);
  const at::Tensor adapted = source->forward(input());
  const fs::path dir = fs::temp_directory_path() / ("peft_shira_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  peft::save_adapter(*source, dir.string());

  // adapter_config.json says mask_type "leading" and cannot hold the function: the indices come from the file.
  for (bool low_cpu : {false, true}) {
    auto model = seeded_one_linear();
    peft::LoadAdapterOptions options;
    options.low_cpu_mem_usage = low_cpu;
    peft::load_adapter(model, dir.string(), "default", options);
    EXPECT_LT(max_abs_diff(model->forward(input()), adapted), 1e-6) << "low_cpu=" << low_cpu;
  }

  // Injected from the config alone, with Python's warning, the adapter refuses to run until indices arrive.
  auto model = seeded_one_linear();
  auto config = std::dynamic_pointer_cast<peft::ShiraConfig>(peft::load_config((dir / "adapter_config.json").string()));
  ASSERT_TRUE(config);
  config->inference_mode(false);
  peft::inject_adapter_in_model(*config, model);
  EXPECT_TRUE(warnings.contains("Argument self.mask_type='leading' is not recognized, please supply your own masking "
                                "function by calling `config.mask_fn = my_mask_fn`."));
  EXPECT_THROW(model->forward(input()), peft::Error);
  const ModelSnapshot before(*model);
  EXPECT_THROW(peft::merge_adapter(*model), peft::MergeError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  peft::set_peft_model_state_dict(*model, peft::safetensors::load_file((dir / "adapter_model.safetensors").string()));
  EXPECT_LT(max_abs_diff(model->forward(input()), adapted), 1e-6);
  fs::remove_all(dir);
}

TEST(Shira, IndicesAreInt32InFilesAndStayIntegersThroughDtypeChanges) {
  WarningCapture warnings;
  auto model = seeded_one_linear();
  peft::inject_adapter_in_model(peft::ShiraConfig().r(1).init_weights(false).target_modules({"lin"}), model);
  const fs::path dir = fs::temp_directory_path() / ("peft_shira_dtype_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  peft::save_adapter(*model, dir.string());
  const peft::StateDict saved = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
  EXPECT_EQ(saved.find("base_model.model.lin.shira_indices")->scalar_type(), torch::kInt);
  EXPECT_EQ(saved.find("base_model.model.lin.shira_weight")->scalar_type(), torch::kFloat);
  fs::remove_all(dir);

  // LibTorch's Module::to(dtype) casts every buffer; the indices keep their dtype, as in PyTorch.
  const at::Tensor indices = indices_of(model).clone();
  model->to(torch::kDouble);
  EXPECT_EQ(indices_of(model).scalar_type(), torch::kInt);
  EXPECT_TRUE(torch::equal(indices_of(model), indices));
  EXPECT_EQ(model->lin->weight.scalar_type(), torch::kDouble);
  EXPECT_EQ(model->forward(input().to(torch::kDouble)).scalar_type(), torch::kDouble);
  // Only the weights train.
  for (const auto& p : model->named_parameters()) {
    EXPECT_EQ(p.value().requires_grad(), p.key() == "lin.shira_weight.default") << p.key();
  }
}

TEST(Shira, StateDictIndicesMustBeInt32) {
  WarningCapture warnings;
  auto source = seeded_one_linear();
  peft::inject_adapter_in_model(peft::ShiraConfig().r(1).target_modules({"lin"}), source);
  const peft::StateDict good = peft::get_peft_model_state_dict(*source);
  for (auto dtype : {torch::kLong, torch::kFloat}) {
    peft::StateDict bad = good;
    bad["lin.shira_indices"] = good.find("lin.shira_indices")->to(dtype);
    auto model = seeded_one_linear();
    const ModelSnapshot before(*model);
    try {
      peft::inject_adapter_in_model(peft::ShiraConfig().r(1).target_modules({"lin"}), model, "default", false, bad);
      ADD_FAILURE() << "indices of dtype " << dtype << " accepted";
    } catch (const peft::StateDictError& e) {
      EXPECT_NE(std::string(e.what()).find("lin.shira_indices"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(ModelSnapshot(*model) == before);
  }
  // Integer tensors are still refused where floating-point weights belong.
  peft::StateDict bad = good;
  bad["lin.shira_weight"] = good.find("lin.shira_weight")->to(torch::kInt);
  auto model = seeded_one_linear();
  EXPECT_THROW(peft::inject_adapter_in_model(peft::ShiraConfig().r(1).target_modules({"lin"}), model, "default", false, bad),
               peft::StateDictError);
}

TEST(Shira, PythonsConfigErrorsAndWarnings) {
  WarningCapture warnings;
  auto model = seeded_one_linear();
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(peft::ShiraConfig().r(3).target_modules({"lin"}), model);  // 3 * 11 > 30
    ADD_FAILURE() << "r = 3 accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("The set rank 3 results in more shira params than the total number of params in "
                                         "the base layer 30 and this is not allowed."),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(peft::inject_adapter_in_model(peft::ShiraConfig().r(0).target_modules({"lin"}), model), peft::ConfigError);
  // A mask with the wrong number of ones, or the wrong shape.
  auto too_few = [](const torch::nn::Module& layer, int64_t r) { return leading_entries(layer, r).fill_(0.0); };
  try {
    peft::inject_adapter_in_model(peft::ShiraConfig().r(1).mask_fn(too_few).target_modules({"lin"}), model);
    ADD_FAILURE() << "an empty mask accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("The SHiRA indices and weights are not the same dimensions for adapter default"),
              std::string::npos)
        << e.what();
  }
  auto transposed = [](const torch::nn::Module& layer, int64_t r) { return leading_entries(layer, r).t(); };
  EXPECT_THROW(peft::inject_adapter_in_model(peft::ShiraConfig().r(1).mask_fn(transposed).target_modules({"lin"}), model),
               peft::ConfigError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);

  // fan_in_fan_out on a Linear: Python's warning, and the flag is turned off.
  peft::inject_adapter_in_model(peft::ShiraConfig().r(1).fan_in_fan_out(true).target_modules({"lin"}), model);
  EXPECT_TRUE(warnings.contains("fan_in_fan_out is set to True but the target module is `torch::nn::Linear`"));
  EXPECT_EQ(json::parse(peft::adapter_config(*model, "default")->to_json_string())["fan_in_fan_out"], false);

  // Fields ShiraConfig does not have.
  EXPECT_THROW(peft::config_from_json_string(R"({"peft_type": "SHIRA", "layers_to_transform": [0]})"), peft::ConfigError);
}

TEST(Shira, ConfigJsonRoundTrip) {
  WarningCapture warnings;
  const auto config = peft::config_from_json_string(
      R"({"peft_type": "SHIRA", "r": 4, "random_seed": null, "mask_type": "random", "target_modules": ["lin"]})");
  const json written = json::parse(config->to_json_string());
  EXPECT_EQ(written["r"], 4);
  EXPECT_TRUE(written["random_seed"].is_null());
  EXPECT_EQ(written["mask_type"], "random");
  EXPECT_FALSE(written.contains("exclude_modules"));
  EXPECT_FALSE(written.contains("bias"));
  const auto seeded = peft::config_from_json_string(R"({"peft_type": "SHIRA", "random_seed": 42})");
  EXPECT_EQ(std::dynamic_pointer_cast<peft::ShiraConfig>(seeded)->random_seed(), 42);
}

}  // namespace
}  // namespace peft_test::shira_test
