// RandLoRA: the variant suites, and what is special about it: the bases randlora_A / randlora_B are one tensor per
// adapter shared by every adapted layer, held by checkpoints under every layer's key (and, in saved files, once more
// as "base_model.randlora_A"), drawn from projection_prng_key exactly as Python draws them (dense, sparse and very
// sparse), and Python's checks across adapters.

#include <filesystem>
#include <fstream>

#include "methods/shared_tensor_checks.h"
#include "support/layers.h"
#include "support/snapshot.h"
#include "support/warnings.h"

namespace peft_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const json kMlpTargets = {"lin0", "lin1"};

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

at::Tensor buffer(const torch::nn::Module& model, const std::string& key) {
  const auto named = model.named_buffers();  // find() points into it: keep it alive
  const at::Tensor* found = named.find(key);
  if (!found) throw std::runtime_error("no buffer " + key);
  return *found;
}

at::Tensor parameter(const torch::nn::Module& model, const std::string& key) {
  const auto named = model.named_parameters();  // find() points into it: keep it alive
  const at::Tensor* found = named.find(key);
  if (!found) throw std::runtime_error("no parameter " + key);
  return *found;
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
  const at::Tensor a0 = buffer(*model, "lin0.randlora_A.default");
  EXPECT_TRUE(same_tensor(a0, buffer(*model, "lin1.randlora_A.default")));
  EXPECT_TRUE(same_tensor(buffer(*model, "lin0.randlora_B.default"), buffer(*model, "lin1.randlora_B.default")));
  EXPECT_EQ(a0.sizes().vec(), (std::vector<int64_t>{4, 1, 24}));
  EXPECT_EQ(buffer(*model, "lin0.randlora_B.default").sizes().vec(), (std::vector<int64_t>{24, 6, 4}));
  EXPECT_EQ(parameter(*model, "lin0.randlora_lambda.default").sizes().vec(), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(parameter(*model, "lin0.randlora_gamma.default").sizes().vec(), (std::vector<int64_t>{4, 16}));
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
  EXPECT_TRUE(torch::equal(saved["base_model.randlora_B"], buffer(*model, "lin0.randlora_B.default")));
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
      if (low_cpu) EXPECT_TRUE(buffer(*model, "lin0.randlora_A.default").device().is_meta());
      const peft::LoadResult result = peft::set_peft_model_state_dict(*model, *state, "default", low_cpu);
      EXPECT_TRUE(result.missing_keys.empty()) << result.missing_keys.front();
      EXPECT_TRUE(result.unexpected_keys.empty()) << result.unexpected_keys.front();
      for (const char* name : {"randlora_A", "randlora_B"}) {
        const at::Tensor t0 = buffer(*model, std::string("lin0.") + name + ".default");
        const at::Tensor t1 = buffer(*model, std::string("lin1.") + name + ".default");
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

// The randlora_mlp vector (Python, save_projection=true, key 0, r=4 on 10 -> 20 and 20 -> 20) loaded as a
// save_projection=false adapter without its bases: the regenerated ones must be Python's, bit for bit.
TEST(RandLora, WithoutSavedBasesTheyAreRegeneratedAsPythonDrawsThem) {
  const VectorCase c = VectorCase::load("randlora_mlp");
  const peft::StateDict python = c.tensors("peft_state_dict.safetensors");
  const fs::path dir = temp_dir("regenerated");
  json adapter_config = c.json("adapter_config.json");
  adapter_config["save_projection"] = false;
  std::ofstream(dir / "adapter_config.json") << adapter_config.dump(2);
  peft::StateDict without;
  for (const auto& item : peft::safetensors::load_file((c.dir / "adapter_model.safetensors").string())) {
    const std::string& key = item.key();
    if (key.find(".randlora_A") == std::string::npos && key.find(".randlora_B") == std::string::npos) {
      without.insert(key, item.value());
    }
  }
  EXPECT_EQ(without.size(), 4u);
  peft::safetensors::save_file(without, (dir / "adapter_model.safetensors").string());

  for (bool low_cpu : {false, true}) {
    WarningCapture warnings;
    VectorModel model = base_model(c);
    peft::LoadAdapterOptions options;
    options.low_cpu_mem_usage = low_cpu;
    const peft::LoadResult result = peft::load_adapter(*model, dir.string(), "default", options);
    EXPECT_TRUE(result.missing_keys.empty());
    EXPECT_TRUE(warnings.contains("Specified to not save basis_A and basis_B within the state dictionary"));
    EXPECT_TRUE(torch::equal(buffer(*model, "lin0.randlora_A.default"), python["lin0.randlora_A"]));
    EXPECT_TRUE(torch::equal(buffer(*model, "lin1.randlora_B.default"), python["lin1.randlora_B"]));
    EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output.safetensors")), 1e-5) << "low_cpu=" << low_cpu;
    EXPECT_EQ(peft::get_peft_model_state_dict(*model).size(), 4u);
  }
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
      EXPECT_TRUE(torch::equal(parameter(*model, "lin1.randlora_lambda.default"), torch::zeros({4, 4})));
      EXPECT_TRUE(torch::equal(parameter(*model, "lin1.randlora_gamma.default"), torch::full({4, 16}, 1.0 / 16)));
    } else {
      EXPECT_TRUE(torch::equal(parameter(*model, "lin0.randlora_lambda.default"), lambda0));
      EXPECT_TRUE(torch::equal(parameter(*model, "lin1.randlora_lambda.default"), lambda1));
      EXPECT_TRUE(torch::equal(parameter(*model, "lin1.randlora_gamma.default"), torch::ones({4, 16}) / 24));
    }
  }
}

TEST(RandLora, SparseBasesAreTernaryAndNormalised) {
  WarningCapture warnings;
  for (bool very : {false, true}) {
    Mlp model = seeded_mlp();
    peft::inject_adapter_in_model(very ? config().very_sparse(true) : config().sparse(true), model);
    const at::Tensor b = buffer(*model, "lin0.randlora_B.default");
    const at::Tensor levels = std::get<0>(at::_unique(b));
    EXPECT_EQ(levels.numel(), 3) << levels;
    EXPECT_NEAR(b.std().item<double>(), 1.0, 1e-5);
    // Python's thresholds: -1 below 1 / (2 sparsity), so about 1/6 (sparse) or 1 / (2 sqrt(24)) (very sparse).
    const double negative = (b < 0).to(torch::kDouble).mean().item<double>();
    EXPECT_NEAR(negative, very ? 1 / (2 * std::sqrt(24.0)) : 1.0 / 6, 0.05);
  }
}

TEST(RandLora, SecondAdapterHasItsOwnBasesAndDeleteRemovesThem) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(4), model);
  peft::inject_adapter_in_model(config(6), model, "other");
  const at::Tensor a_other = buffer(*model, "lin0.randlora_A.other");
  EXPECT_FALSE(same_tensor(buffer(*model, "lin0.randlora_A.default"), a_other));
  EXPECT_TRUE(same_tensor(a_other, buffer(*model, "lin1.randlora_A.other")));
  EXPECT_EQ(a_other.sizes().vec(), (std::vector<int64_t>{6, 1, 24}));

  peft::set_adapter(model, "default");
  const at::Tensor with_default = model->forward(mlp_input());
  peft::delete_adapter(model, "other");
  for (const auto& b : model->named_buffers()) EXPECT_EQ(b.key().find(".other"), std::string::npos) << b.key();
  EXPECT_LT(max_abs_diff(model->forward(mlp_input()), with_default), 1e-6);
}

TEST(RandLora, AdaptersMustShareTheKeyAndTheSaveProjectionSetting) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(config().projection_prng_key(3), model, "other");
    ADD_FAILURE() << "a second key was accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_STREQ(e.what(), "RandLora PRNG initialisation key must be the same for all adapters. Got "
                           "config.projection_prng_key=3 but previous config had 0.");
  }
  try {
    peft::inject_adapter_in_model(config().save_projection(false), model, "other");
    ADD_FAILURE() << "mixed save_projection was accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_STREQ(e.what(), "RandLora projection weights must be saved for all adapters or none, but got multiple "
                           "different values: [False, True]");
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  EXPECT_EQ(peft::adapter_names(model), std::vector<std::string>{"default"});
}

TEST(RandLora, ConfigChecksUsePythonsTexts) {
  WarningCapture warnings;
  auto rejects = [](const json& fields, const std::string& text) { expect_config_error("RANDLORA", fields, text); };
  rejects({{"r", 0}}, "`r` should be a positive integer value but the value passed is 0");
  rejects({{"bias", "lora_only"}}, "\"randlora_only\"");
  rejects({{"randlora_dropout", 1.5}}, "randlora_dropout");
  rejects({{"layers_pattern", "blocks"}}, "When `layers_pattern` is specified, `layers_to_transform` must also be specified.");
  rejects({{"exclude_modules", {"lin0"}}}, "exclude_modules");
}

TEST(RandLora, MisshapedBasesAreRefusedByNameAndChangeNothing) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  const fs::path dir = temp_dir("misshaped");
  peft::save_adapter(*model, dir.string());
  for (const char* key : {"base_model.randlora_A", "base_model.model.lin1.randlora_A"}) {
    peft::StateDict file = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
    file[key] = torch::zeros({4, 1, 10});
    const fs::path bad = temp_dir(std::string("misshaped_") + (key[11] == 'm' ? "layer" : "model"));
    fs::copy_file(dir / "adapter_config.json", bad / "adapter_config.json");
    peft::safetensors::save_file(file, (bad / "adapter_model.safetensors").string());
    Mlp fresh = seeded_mlp();
    const ModelSnapshot fresh_before(*fresh);
    try {
      peft::load_adapter(fresh, bad.string());
      ADD_FAILURE() << "accepted";
    } catch (const peft::StateDictError& e) {
      // Named as the model reads it (save_pretrained's prefix removed).
      const std::string named = std::string(key).substr(key[11] == 'm' ? 17 : 0);
      EXPECT_NE(std::string(e.what()).find(named + " has shape [4, 1, 10]"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(ModelSnapshot(*fresh) == fresh_before);
    EXPECT_TRUE(fresh->named_buffers().is_empty());
  }
}

TEST(RandLora, StateDictInjectionAdaptsTheLayersItsKeysName) {
  WarningCapture warnings;
  Mlp source = seeded_mlp();
  peft::inject_adapter_in_model(config().target_modules({"lin1"}), source);
  const peft::StateDict state = peft::get_peft_model_state_dict(*source);
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(peft::RandLoraConfig().r(4).randlora_alpha(8), model, "default", false, state);
  EXPECT_EQ(peft::targeted_module_names(model), (std::vector<std::string>{"lin1"}));
  peft::set_peft_model_state_dict(*model, state);
  EXPECT_LT(max_abs_diff(model->forward(mlp_input()), source->forward(mlp_input())), 1e-6);
}

TEST(RandLora, CastsAndDevicePlacementKeepTheBasesShared) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  const fs::path dir = temp_dir("cast");
  peft::save_adapter(*model, dir.string());
  Mlp loaded = seeded_mlp();
  peft::LoadAdapterOptions options;
  options.dtype = torch::kDouble;
  options.autocast_adapter_dtype = false;
  peft::load_adapter(loaded, dir.string(), "default", options);
  EXPECT_EQ(buffer(*loaded, "lin1.randlora_B.default").scalar_type(), torch::kDouble);
  EXPECT_TRUE(same_tensor(buffer(*loaded, "lin0.randlora_B.default"), buffer(*loaded, "lin1.randlora_B.default")));
}

TEST(RandLora, LayersToTransformSelectsLayersAndSizesTheBases) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("lora_blocks_layers_to_transform");
  VectorModel model = base_model(c);
  json j = {{"peft_type", "RANDLORA"}, {"r", 4}, {"target_modules", {"fc1", "fc2"}}, {"layers_to_transform", {1}},
            {"layers_pattern", "blocks"}, {"init_weights", false}};
  peft::inject_adapter_in_model(*peft::config_from_json_string(j.dump()), model);
  EXPECT_EQ(peft::targeted_module_names(model),
            (std::vector<std::string>{"encoder.blocks.1.fc1", "encoder.blocks.1.fc2"}));
  // fc1 is 8 -> 16, fc2 16 -> 8: (16, 16), so 4 bases.
  EXPECT_EQ(buffer(*model, "encoder.blocks.1.fc1.randlora_A.default").sizes().vec(), (std::vector<int64_t>{4, 1, 16}));
  EXPECT_EQ(buffer(*model, "encoder.blocks.1.fc2.randlora_B.default").sizes().vec(), (std::vector<int64_t>{16, 4, 4}));
}

TEST(RandLora, TransposedLayersMergeLikeTheirForward) {
  WarningCapture warnings;
  OddLayers model;
  model->eval();
  peft::inject_adapter_in_model(peft::RandLoraConfig().r(4).init_weights(false).target_modules({"conv1d"}), model);
  EXPECT_TRUE(warnings.contains("fan_in_fan_out is set to False but the target module is `Conv1D`"));
  const at::Tensor x = torch::randint(0, 10, {2, 3});
  const at::Tensor adapted = model->forward(x);
  peft::merge_and_unload(model);
  EXPECT_LT(max_abs_diff(model->forward(x), adapted), 1e-4);
}

TEST(RandLora, OfflineMergeUsesTheSharedBases) {
  WarningCapture warnings;
  expect_offline_merge_matches("randlora_mlp");
}

}  // namespace
}  // namespace peft_test
