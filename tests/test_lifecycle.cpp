// Adapter lifecycle on injected models: switching, disabling, deleting, merging, unloading, per-sample
// adapters, hot-swapping, grads and dtypes; against Python PEFT's outputs where the vectors have them.

#include <chrono>
#include <thread>

#include "support/layers.h"
#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::lifecycle_test {
namespace {

constexpr double kOutputAtol = 1e-5;
constexpr double kWeightAtol = 1e-6;

bool has_adapter_children(const torch::nn::Module& model) {
  for (const auto& m : model.named_modules()) {
    if (m.key().find("lora_") != std::string::npos || m.key().find("modules_to_save") != std::string::npos) return true;
  }
  return false;
}

double state_dict_diff(const torch::nn::Module& model, const peft::StateDict& expected) {
  const auto params = model.named_parameters();
  EXPECT_EQ(params.size(), expected.size());
  double worst = 0;
  for (const auto& item : expected) {
    const at::Tensor* t = params.find(item.key());
    if (!t) {
      ADD_FAILURE() << "model lacks " << item.key();
      continue;
    }
    worst = std::max(worst, max_abs_diff(*t, item.value()));
  }
  return worst;
}

// ---------------------------------------------------------------- merging, against every LoRA vector

class MergeVectors : public testing::TestWithParam<std::string> {};

TEST_P(MergeVectors, MergeAndUnloadMatchesPython) {
  const VectorCase c = VectorCase::load(GetParam());
  WarningCapture warnings;
  const at::Tensor x = c.input();
  std::vector<std::string> adapters{"default"};
  if (c.has("other/adapter_config.json")) adapters.push_back("other");
  for (const std::string& name : adapters) {
    VectorModel model = base_model(c);
    inject_case_adapters(model, c);
    peft::set_adapter(*model, name);
    const std::string suffix = name == "default" ? "" : "_" + name;
    const at::Tensor unmerged = model->forward(x);
    // merge -> same output, no double counting; unmerge -> back to the unmerged weights.
    const ModelSnapshot before(*model);
    peft::merge_adapter(*model);
    EXPECT_LT(max_abs_diff(model->forward(x), c.tensor("output_merged" + suffix + ".safetensors")), kOutputAtol) << name;
    EXPECT_LT(max_abs_diff(model->forward(x), unmerged), kOutputAtol);
    peft::unmerge_adapter(*model);
    for (const auto& [key, value] : before.values) EXPECT_LT(max_abs_diff(model->named_parameters()[key], value), kWeightAtol) << key;
    EXPECT_LT(max_abs_diff(model->forward(x), unmerged), kOutputAtol);
    // merge_and_unload -> a plain model with Python's merged weights.
    peft::merge_and_unload(*model);
    EXPECT_FALSE(has_adapter_children(*model));
    EXPECT_LT(state_dict_diff(*model, c.tensors("merged_model" + suffix + ".safetensors")), kWeightAtol) << name;
    EXPECT_LT(max_abs_diff(model->forward(x), c.tensor("output_merged" + suffix + ".safetensors")), kOutputAtol) << name;
  }
}

TEST_P(MergeVectors, SafeMergeGivesTheSameWeights) {
  const VectorCase c = VectorCase::load(GetParam());
  WarningCapture warnings;
  VectorModel model = base_model(c);
  inject_case_adapters(model, c);
  peft::set_adapter(*model, "default");
  peft::merge_and_unload(*model, /*safe_merge=*/true);
  EXPECT_LT(state_dict_diff(*model, c.tensors("merged_model.safetensors")), kWeightAtol);
}

INSTANTIATE_TEST_SUITE_P(Vectors, MergeVectors, testing::ValuesIn(cases_with_peft_type("LORA")),
                         [](const auto& info) { return info.param; });

// ---------------------------------------------------------------- switching, disabling, mixed batches

class TwoAdapters : public testing::TestWithParam<std::string> {};

TEST_P(TwoAdapters, SwitchDisableAndMixedBatchMatchPython) {
  const VectorCase c = VectorCase::load(GetParam());
  WarningCapture warnings;
  VectorModel model = base_model(c);
  inject_case_adapters(model, c);
  const at::Tensor x = c.input();
  EXPECT_EQ(peft::adapter_names(*model), std::vector<std::string>({"default", "other"}));
  EXPECT_EQ(peft::active_adapters(*model), std::vector<std::string>({"other"}));
  EXPECT_LT(max_abs_diff(model->forward(x), c.tensor("output_other.safetensors")), kOutputAtol);
  peft::set_adapter(*model, "default");
  EXPECT_EQ(peft::active_adapters(*model), std::vector<std::string>({"default"}));
  EXPECT_LT(max_abs_diff(model->forward(x), c.tensor("output_default.safetensors")), kOutputAtol);

  peft::disable_adapters(*model);
  EXPECT_TRUE(peft::adapters_disabled(*model));
  EXPECT_LT(max_abs_diff(model->forward(x), c.tensor("output_base.safetensors")), kOutputAtol);
  peft::enable_adapters(*model);
  EXPECT_LT(max_abs_diff(model->forward(x), c.tensor("output_default.safetensors")), kOutputAtol);

  {
    const auto names = c.meta["mixed_adapter_names"].get<std::vector<std::string>>();
    peft::AdapterNamesPerSample per_sample(*model, names);
    EXPECT_LT(max_abs_diff(model->forward(x), c.tensor("output_mixed.safetensors")), kOutputAtol);
  }
  EXPECT_LT(max_abs_diff(model->forward(x), c.tensor("output_default.safetensors")), kOutputAtol);

  // Both active: their contributions add up.
  peft::set_adapter(*model, {"default", "other"});
  const at::Tensor both = model->forward(x);
  EXPECT_FALSE(torch::allclose(both, c.tensor("output_default.safetensors")));
  EXPECT_FALSE(torch::allclose(both, c.tensor("output_other.safetensors")));
}

INSTANTIATE_TEST_SUITE_P(Vectors, TwoAdapters, testing::Values("lora_two_adapters", "lora_llama_two_adapters_mixed"),
                         [](const auto& info) { return info.param; });

VectorModel two_adapter_mlp() {
  const VectorCase c = VectorCase::load("lora_two_adapters");
  VectorModel model = base_model(c);
  inject_case_adapters(model, c);
  return model;
}

TEST(Lifecycle, UnknownAdapterNamesListTheKnownOnes) {
  WarningCapture warnings;
  VectorModel model = two_adapter_mlp();
  try {
    peft::set_adapter(*model, "nope");
    FAIL();
  } catch (const peft::AdapterNameError& e) {
    EXPECT_NE(std::string(e.what()).find("['default', 'other']"), std::string::npos) << e.what();
  }
  EXPECT_THROW(peft::delete_adapter(*model, "nope"), peft::AdapterNameError);
  EXPECT_THROW(peft::merge_adapter(*model, {"nope"}), peft::AdapterNameError);
}

TEST(Lifecycle, DisabledAdaptersGuardRestoresEvenOnException) {
  WarningCapture warnings;
  VectorModel model = two_adapter_mlp();
  const at::Tensor x = torch::randn({3, 10});
  const at::Tensor adapted = model->forward(x);
  try {
    peft::DisabledAdapters guard(*model);
    EXPECT_TRUE(peft::adapters_disabled(*model));
    throw std::runtime_error("boom");
  } catch (const std::runtime_error&) {
  }
  EXPECT_FALSE(peft::adapters_disabled(*model));
  EXPECT_TRUE(torch::equal(model->forward(x), adapted));
  peft::disable_adapters(*model);
  { peft::DisabledAdapters guard(*model); }
  EXPECT_TRUE(peft::adapters_disabled(*model));  // it was disabled before the guard: stays so
}

TEST(Lifecycle, DisablingFreezesAndEnablingRestoresTraining) {
  torch::nn::Sequential model(nn::Linear(4, 4));
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"0"}), model);
  auto p = model->named_parameters();
  EXPECT_TRUE(p["0.lora_A.default.weight"].requires_grad());
  peft::disable_adapters(*model);
  EXPECT_FALSE(p["0.lora_A.default.weight"].requires_grad());
  peft::enable_adapters(*model);
  EXPECT_TRUE(p["0.lora_A.default.weight"].requires_grad());
}

TEST(Lifecycle, DeleteAdapterRemovesItEverywhere) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("lora_two_adapters");
  VectorModel model = two_adapter_mlp();
  peft::set_adapter(*model, {"default", "other"});
  peft::delete_adapter(*model, "other");
  for (const auto& name : model->named_parameters().keys()) EXPECT_EQ(name.find(".other"), std::string::npos) << name;
  EXPECT_EQ(peft::adapter_names(*model), std::vector<std::string>({"default"}));
  EXPECT_EQ(peft::active_adapters(*model), std::vector<std::string>({"default"}));
  EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output_default.safetensors")), kOutputAtol);
  // lin2 only had "other": it is a plain layer again.
  for (const auto& m : model->named_modules().keys()) EXPECT_NE(m.rfind("lin2.", 0), 0u) << m;
  // Deleting the last active adapter: nothing left to activate, the model is plain.
  peft::delete_adapter(*model, "default");
  EXPECT_TRUE(peft::adapter_names(*model).empty());
  EXPECT_FALSE(has_adapter_children(*model));
  EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output_base.safetensors")), kOutputAtol);
}

TEST(Lifecycle, DeletingTheActiveAdapterActivatesAnotherWithPythonsWarning) {
  VectorModel model = two_adapter_mlp();  // "other" is active
  WarningCapture warnings;
  peft::delete_adapter(*model, "other");
  EXPECT_TRUE(warnings.contains("Adapter other was active which is now deleted. Setting active adapter to default."));
  EXPECT_EQ(peft::active_adapters(*model), std::vector<std::string>({"default"}));
}

TEST(Lifecycle, MergedAdaptersCannotBeDeleted) {
  WarningCapture warnings;
  VectorModel model = two_adapter_mlp();
  peft::merge_adapter(*model);
  const ModelSnapshot before(*model);
  EXPECT_THROW(peft::delete_adapter(*model, "other"), peft::Error);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(Lifecycle, MergeWarnsLikePythonAndNeverDoubleCounts) {
  VectorModel model = two_adapter_mlp();
  const at::Tensor x = torch::randn({3, 10});
  const at::Tensor expected = model->forward(x);
  WarningCapture warnings;
  peft::merge_adapter(*model);
  peft::merge_adapter(*model);
  EXPECT_TRUE(warnings.contains("All adapters are already merged, nothing to do."));
  EXPECT_LT(max_abs_diff(model->forward(x), expected), kOutputAtol);
  peft::merge_adapter(*model, {"default"});
  EXPECT_TRUE(warnings.contains("Already following adapters were merged other. You are now additionally merging default."));
  peft::unmerge_adapter(*model);
  peft::unmerge_adapter(*model);
  EXPECT_TRUE(warnings.contains("Already unmerged. Nothing to do."));
  EXPECT_LT(max_abs_diff(model->forward(x), expected), kOutputAtol);
}

TEST(Lifecycle, SetAdapterUnmergesFirst) {
  VectorModel model = two_adapter_mlp();
  const VectorCase c = VectorCase::load("lora_two_adapters");
  WarningCapture warnings;
  peft::merge_adapter(*model);
  peft::set_adapter(*model, "default");
  EXPECT_TRUE(warnings.contains("Adapter cannot be set when the model is merged. Unmerging the model first."));
  EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output_default.safetensors")), kOutputAtol);
}

TEST(Lifecycle, SafeMergeRefusesNanAndChangesNothing) {
  WarningCapture warnings;
  VectorModel model = two_adapter_mlp();
  {
    torch::NoGradGuard no_grad;
    model->named_parameters()["lin2.lora_B.other.weight"][0][0] = std::numeric_limits<float>::quiet_NaN();
  }
  const ModelSnapshot before(*model);
  try {
    peft::merge_adapter(*model, {}, /*safe_merge=*/true);
    FAIL();
  } catch (const peft::MergeError& e) {
    EXPECT_EQ(std::string(e.what()), "NaNs detected in the merged weights. The adapter other seems to be broken");
  }
  // lin1 (merged before lin2 in module order) is untouched too.
  const ModelSnapshot after(*model);
  for (const auto& [key, value] : before.values) {
    if (key.find("lora_B.other") == std::string::npos) EXPECT_TRUE(torch::equal(after.values.at(key), value)) << key;
  }
  EXPECT_TRUE(peft::active_adapters(*model) == std::vector<std::string>({"other"}));
}

TEST(Lifecycle, MergingHalfPrecisionComputesTheDeltaInFloat32) {
  torch::manual_seed(0);
  torch::nn::Sequential model(nn::Linear(64, 64));
  peft::inject_adapter_in_model(peft::LoraConfig().r(8).init_lora_weights(false).target_modules({"0"}), model);
  model->to(torch::kBFloat16);
  auto p = model->named_parameters();
  const at::Tensor A = p["0.lora_A.default.weight"].to(torch::kFloat), B = p["0.lora_B.default.weight"].to(torch::kFloat);
  const at::Tensor expected = p["0.weight"].to(torch::kFloat) + (torch::matmul(B, A) * 1.0).to(torch::kBFloat16).to(torch::kFloat);
  peft::merge_adapter(*model);
  EXPECT_EQ(p["0.weight"].scalar_type(), torch::kBFloat16);
  EXPECT_LT(max_abs_diff(p["0.weight"].to(torch::kFloat), expected), 1e-2);
}

TEST(Lifecycle, GroupedConvolutionsRefuseToMergeWithoutChange) {
  torch::nn::Sequential model(nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).groups(2)));
  WarningCapture warnings;
  peft::inject_adapter_in_model(peft::LoraConfig().r(2).target_modules({"0"}), model);
  const ModelSnapshot before(*model);
  EXPECT_THROW(peft::merge_adapter(*model), peft::MergeError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(Lifecycle, UnloadWithoutMergeRestoresTheBase) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("lora_two_adapters");
  VectorModel model = two_adapter_mlp();
  peft::unload(*model);
  EXPECT_FALSE(has_adapter_children(*model));
  EXPECT_LT(state_dict_diff(*model, c.tensors("base.safetensors")), 0.0 + 1e-12);
}

// ---------------------------------------------------------------- modules_to_save

TEST(Lifecycle, ModulesToSaveFollowTheActiveAdapter) {
  WarningCapture warnings;
  torch::manual_seed(0);
  VectorModel model(VectorCase::load("lora_mlp_basic").model);
  model->eval();
  const at::Tensor x = torch::randn({3, 10});
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}).modules_to_save({{"lin2"}}), model, "a");
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}).modules_to_save({{"lin2"}}), model, "b");
  auto p = model->named_parameters();
  {
    torch::NoGradGuard no_grad;
    p["lin2.modules_to_save.a.bias"].fill_(1.0);
    p["lin2.modules_to_save.b.bias"].fill_(2.0);
  }
  peft::set_adapter(*model, "a");
  const at::Tensor out_a = model->forward(x);
  peft::set_adapter(*model, "b");
  const at::Tensor out_b = model->forward(x);
  EXPECT_TRUE(torch::allclose(out_b - out_a, torch::ones_like(out_a), 1e-5, 1e-5));
  EXPECT_TRUE(p["lin2.modules_to_save.b.weight"].requires_grad());
  EXPECT_FALSE(p["lin2.modules_to_save.a.weight"].requires_grad());
  EXPECT_THROW(peft::set_adapter(*model, {"a", "b"}), peft::ConfigError);
  {
    peft::AdapterNamesPerSample per_sample(*model, {"a", "b", "__base__"});
    const at::Tensor mixed = model->forward(x);
    EXPECT_TRUE(torch::allclose(mixed[0], out_a[0], 1e-5, 1e-5));
    EXPECT_TRUE(torch::allclose(mixed[1], out_b[1], 1e-5, 1e-5));
  }
  // merge_and_unload keeps the active adapter's trained copy.
  peft::merge_and_unload(*model);
  EXPECT_TRUE(torch::equal(model->named_parameters()["lin2.bias"], torch::full({4}, 2.0)));
  EXPECT_TRUE(torch::allclose(model->forward(x), out_b, 1e-5, 1e-5));
}

// ---------------------------------------------------------------- per-sample adapters

TEST(Lifecycle, PerSampleAdaptersCheckLikePython) {
  WarningCapture warnings;
  VectorModel model = two_adapter_mlp();
  const at::Tensor x = torch::randn({3, 10});
  model->train();
  EXPECT_THROW(peft::AdapterNamesPerSample(*model, {"default", "other", "__base__"}), peft::ConfigError);
  model->eval();
  try {
    peft::AdapterNamesPerSample guard(*model, {"default", "zzz", "yyy"});
    FAIL();
  } catch (const peft::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "Trying to infer with non-existing adapter(s): yyy, zzz");
  }
  {
    peft::AdapterNamesPerSample guard(*model, {"default", "other"});
    try {
      model->forward(x);
      FAIL();
    } catch (const peft::ConfigError& e) {
      EXPECT_EQ(std::string(e.what()),
                "Length of `adapter_names` should be the same as the number of inputs, but got 2 and 3 respectively.");
    }
  }
  peft::merge_adapter(*model);
  {
    peft::AdapterNamesPerSample guard(*model, {"default", "other", "__base__"});
    EXPECT_THROW(model->forward(x), peft::ConfigError);
  }
  peft::unmerge_adapter(*model);
  // DoRA is refused.
  torch::nn::Sequential dora(nn::Linear(4, 4));
  peft::inject_adapter_in_model(peft::LoraConfig().use_dora(true).target_modules({"0"}), dora);
  dora->eval();
  peft::AdapterNamesPerSample guard(*dora, {"default"});
  try {
    dora->forward(torch::randn({1, 4}));
    FAIL();
  } catch (const peft::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "Cannot pass `adapter_names` when DoRA is enabled.");
  }
}

TEST(Lifecycle, PerSampleAdaptersAreThreadLocal) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("lora_two_adapters");
  VectorModel model = two_adapter_mlp();
  const at::Tensor x = c.input();
  const auto names = c.meta["mixed_adapter_names"].get<std::vector<std::string>>();
  peft::AdapterNamesPerSample guard(*model, names);
  at::Tensor other_thread;
  std::thread t([&] { other_thread = model->forward(x); });
  t.join();
  EXPECT_LT(max_abs_diff(other_thread, c.tensor("output_other.safetensors")), kOutputAtol);  // unaffected
  EXPECT_LT(max_abs_diff(model->forward(x), c.tensor("output_mixed.safetensors")), kOutputAtol);
}

// ---------------------------------------------------------------- concurrency

// ---------------------------------------------------------------- hot-swapping

struct Trained {
  peft::StateDict state_dict;
  std::shared_ptr<peft::LoraConfig> config;
  at::Tensor output;
};

// An adapter trained elsewhere: injected alone into a fresh copy of the MLP.
Trained train_alone(const peft::LoraConfig& config, const at::Tensor& x, int seed) {
  torch::manual_seed(seed);
  VectorModel model = base_model(VectorCase::load("lora_mlp_basic"));
  peft::inject_adapter_in_model(config, model);
  return {peft::get_peft_model_state_dict(*model), std::make_shared<peft::LoraConfig>(config), model->forward(x)};
}

TEST(Hotswap, SwapsWeightsAndScalingAcrossRanks) {
  const at::Tensor x = torch::randn({3, 10});
  const auto small = train_alone(peft::LoraConfig().r(4).lora_alpha(8).init_lora_weights(false).target_modules({"lin0", "lin1"}), x, 1);
  const auto large = train_alone(peft::LoraConfig().r(8).lora_alpha(8).init_lora_weights(false).target_modules({"lin0", "lin1"}), x, 2);
  VectorModel model = base_model(VectorCase::load("lora_mlp_basic"));
  peft::inject_adapter_in_model(*small.config, model);
  peft::set_peft_model_state_dict(*model, small.state_dict);
  EXPECT_LT(max_abs_diff(model->forward(x), small.output), kOutputAtol);
  peft::prepare_for_hotswap(*model, 8);
  EXPECT_EQ(model->named_parameters()["lin0.lora_A.default.weight"].size(0), 8);
  EXPECT_LT(max_abs_diff(model->forward(x), small.output), kOutputAtol);  // padding changes nothing
  const void* storage = model->named_parameters()["lin0.lora_A.default.weight"].data_ptr();
  peft::hotswap_adapter(*model, large.state_dict, "default", large.config.get());
  EXPECT_LT(max_abs_diff(model->forward(x), large.output), kOutputAtol);
  EXPECT_EQ(model->named_parameters()["lin0.lora_A.default.weight"].data_ptr(), storage);  // swapped in place
  peft::hotswap_adapter(*model, small.state_dict, "default", small.config.get());
  EXPECT_LT(max_abs_diff(model->forward(x), small.output), kOutputAtol);
}

TEST(Hotswap, FewerLayersZeroTheRest) {
  const at::Tensor x = torch::randn({3, 10});
  const auto both = train_alone(peft::LoraConfig().r(4).init_lora_weights(false).target_modules({"lin0", "lin1"}), x, 1);
  const auto one = train_alone(peft::LoraConfig().r(4).init_lora_weights(false).target_modules({"lin0"}), x, 2);
  VectorModel model = base_model(VectorCase::load("lora_mlp_basic"));
  peft::inject_adapter_in_model(*both.config, model);
  peft::set_peft_model_state_dict(*model, both.state_dict);
  peft::hotswap_adapter(*model, one.state_dict, "default", one.config.get());
  EXPECT_LT(max_abs_diff(model->forward(x), one.output), kOutputAtol);
}

TEST(Hotswap, RefusesIncompatibleAdaptersWithoutChange) {
  WarningCapture warnings;
  const at::Tensor x = torch::randn({3, 10});
  const auto base_cfg = peft::LoraConfig().r(4).init_lora_weights(false).target_modules({"lin0"});
  const auto trained = train_alone(base_cfg, x, 1);
  VectorModel model = base_model(VectorCase::load("lora_mlp_basic"));
  peft::inject_adapter_in_model(base_cfg, model);
  const ModelSnapshot before(*model);
  auto rslora = base_cfg;
  rslora.use_rslora(true);
  try {
    peft::hotswap_adapter(*model, trained.state_dict, "default", &rslora);
    FAIL();
  } catch (const peft::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "Configs are incompatible: for use_rslora, False != True");
  }
  auto dropout = base_cfg;
  dropout.lora_dropout(0.1);
  EXPECT_THROW(peft::hotswap_adapter(*model, trained.state_dict, "default", &dropout), peft::ConfigError);
  peft::StateDict extra = trained.state_dict;
  extra.insert("lin2.lora_A.weight", torch::zeros({4, 20}));
  try {
    peft::hotswap_adapter(*model, extra, "default");
    FAIL();
  } catch (const peft::StateDictError& e) {
    EXPECT_EQ(std::string(e.what()), "Hot swapping the adapter did not succeed, unexpected keys found: lin2.lora_A.weight.");
  }
  const auto larger = train_alone(peft::LoraConfig().r(4).init_lora_weights(false).target_modules({"lin0"}), x, 3);
  peft::StateDict wrong = larger.state_dict;
  wrong["lin0.lora_A.weight"] = torch::zeros({4, 11});
  EXPECT_THROW(peft::hotswap_adapter(*model, wrong, "default"), peft::StateDictError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  EXPECT_THROW(peft::prepare_for_hotswap(*model, 2), peft::ConfigError);  // smaller than the rank
}

TEST(Hotswap, FromADirectoryWrittenByPython) {
  // lora_mlp_basic's adapter swapped into a model holding another adapter of the same shape.
  const VectorCase c = VectorCase::load("lora_mlp_basic");
  WarningCapture warnings;
  VectorModel model = base_model(c);
  peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), model);
  EXPECT_GT(max_abs_diff(model->forward(c.input()), c.tensor("output.safetensors")), kOutputAtol);
  peft::hotswap_adapter(*model, c.dir.string(), "default");
  EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output.safetensors")), kOutputAtol);
}

// ---------------------------------------------------------------- grads, dtypes, counts

TEST(Lifecycle, SetRequiresGradAndCastDtype) {
  WarningCapture warnings;
  VectorModel model = two_adapter_mlp();
  auto p = model->named_parameters();
  EXPECT_FALSE(p["lin0.lora_A.default.weight"].requires_grad());
  peft::set_requires_grad(*model, {"default"}, true);
  EXPECT_TRUE(p["lin0.lora_A.default.weight"].requires_grad());
  peft::set_requires_grad(*model, {"default"}, false);
  EXPECT_FALSE(p["lin0.lora_A.default.weight"].requires_grad());

  const at::Tensor x = torch::randn({3, 10});
  const at::Tensor before = model->forward(x);
  peft::cast_adapter_dtype(*model, "other", torch::kDouble);
  p = model->named_parameters();
  EXPECT_EQ(p["lin1.lora_A.other.weight"].scalar_type(), torch::kDouble);
  EXPECT_EQ(p["lin1.lora_A.default.weight"].scalar_type(), torch::kFloat);
  const at::Tensor after = model->forward(x);
  EXPECT_EQ(after.scalar_type(), torch::kFloat);
  EXPECT_LT(max_abs_diff(after, before), 1e-5);
  EXPECT_THROW(peft::cast_adapter_dtype(*model, "other", torch::kLong), peft::ConfigError);
}

TEST(Lifecycle, TrainableParametersInPythonsFormat) {
  torch::nn::Sequential model(nn::Linear(100, 100));
  peft::inject_adapter_in_model(peft::LoraConfig().r(8).target_modules({"0"}), model);
  const peft::ParameterCount count = peft::trainable_parameters(*model);
  EXPECT_EQ(count.trainable, 1600);
  EXPECT_EQ(count.total, 10100 + 1600);
  std::ostringstream out;
  peft::print_trainable_parameters(*model, out);
  EXPECT_EQ(out.str(), "trainable params: 1,600 || all params: 11,700 || trainable%: 13.6752\n");
}

}  // namespace
}  // namespace peft_test::lifecycle_test
