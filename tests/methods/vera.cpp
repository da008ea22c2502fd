// VeRA: the variant suites, and what is special about it: the projections vera_A / vera_B are one tensor per
// adapter shared by every adapted layer (saved once as "base_model.vera_A"), regenerated from projection_prng_key
// exactly as Python draws them when save_projection=false, and Python's checks across adapters and on load.

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
    Vera, MethodVariants,
    testing::Values(Variant{"vera", false,
                            {{"peft_type", "VERA"}, {"target_modules", kMlpTargets}, {"r", 4}, {"init_weights", false}}},
                    Variant{"vera_regenerated_projections", false,
                            {{"peft_type", "VERA"},
                             {"target_modules", kMlpTargets},
                             {"r", 6},
                             {"save_projection", false},
                             {"projection_prng_key", 5},
                             {"d_initial", 0.2},
                             {"vera_dropout", 0.1}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Vera, UnsupportedLayers, testing::Values(UnsupportedLayer{"VERA", "emb"}), UnsupportedLayerName());

peft::VeraConfig config(int64_t r = 4) {
  return peft::VeraConfig().r(r).init_weights(false).target_modules({"lin0", "lin1"});
}

at::Tensor buffer(const torch::nn::Module& model, const std::string& key) {
  const auto named = model.named_buffers();  // find() points into it: keep it alive
  const at::Tensor* found = named.find(key);
  if (!found) throw std::runtime_error("no buffer " + key);
  return *found;
}

bool has_buffer(const torch::nn::Module& model, const std::string& key) { return model.named_buffers().contains(key); }

std::map<std::string, at::Tensor> buffers_of(const torch::nn::Module& model) {
  std::map<std::string, at::Tensor> out;
  for (const auto& b : model.named_buffers()) out[b.key()] = b.value().detach().clone();
  return out;
}

bool same_buffers(const std::map<std::string, at::Tensor>& a, const std::map<std::string, at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [key, value] : a) {
    if (!b.count(key) || !torch::equal(value, b.at(key))) return false;
  }
  return true;
}

std::vector<std::string> keys_of(const peft::StateDict& state_dict) { return state_dict.keys(); }

fs::path temp_dir(const std::string& name) { return fresh_temp_dir("vera", name); }

TEST(Vera, ProjectionsAreOneTensorSharedByEveryLayerAndSavedOnce) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  // Sized by the largest layer: lin0 is 16 -> 24, lin1 24 -> 16.
  const at::Tensor a0 = buffer(*model, "lin0.vera_A.default");
  const at::Tensor a1 = buffer(*model, "lin1.vera_A.default");
  EXPECT_TRUE(same_tensor(a0, a1));
  EXPECT_TRUE(same_tensor(buffer(*model, "lin0.vera_B.default"), buffer(*model, "lin1.vera_B.default")));
  EXPECT_EQ(a0.sizes().vec(), (std::vector<int64_t>{4, 24}));
  EXPECT_EQ(buffer(*model, "lin0.vera_B.default").sizes().vec(), (std::vector<int64_t>{24, 4}));
  EXPECT_FALSE(a0.requires_grad());
  EXPECT_FALSE(model->named_parameters().contains("lin0.vera_A.default"));

  const peft::StateDict state = peft::get_peft_model_state_dict(*model);
  EXPECT_EQ(keys_of(state), (std::vector<std::string>{"lin0.vera_lambda_b", "lin0.vera_lambda_d", "lin1.vera_lambda_b",
                                                     "lin1.vera_lambda_d", "base_model.vera_A", "base_model.vera_B"}));
  EXPECT_TRUE(same_tensor(state["base_model.vera_A"], a0));

  // save_pretrained's file: layer keys prefixed, the shared ones as they are.
  const fs::path dir = temp_dir("saved_once");
  peft::save_adapter(*model, dir.string());
  std::vector<std::string> saved = keys_of(peft::safetensors::load_file((dir / "adapter_model.safetensors").string()));
  std::sort(saved.begin(), saved.end());
  EXPECT_EQ(saved, (std::vector<std::string>{"base_model.model.lin0.vera_lambda_b", "base_model.model.lin0.vera_lambda_d",
                                             "base_model.model.lin1.vera_lambda_b", "base_model.model.lin1.vera_lambda_d",
                                             "base_model.vera_A", "base_model.vera_B"}));
}

TEST(Vera, LoadingGivesEveryLayerTheSameNewProjection) {
  WarningCapture warnings;
  Mlp source = seeded_mlp();
  peft::inject_adapter_in_model(config(), source);
  peft::StateDict state;
  for (const auto& item : peft::get_peft_model_state_dict(*source)) state.insert(item.key(), item.value() + 0.5);
  for (bool low_cpu : {false, true}) {
    Mlp model = seeded_mlp();
    peft::inject_adapter_in_model(config(), model, "default", low_cpu);
    if (low_cpu) EXPECT_TRUE(buffer(*model, "lin0.vera_A.default").device().is_meta());
    const peft::LoadResult result = peft::set_peft_model_state_dict(*model, state, "default", low_cpu);
    EXPECT_TRUE(result.missing_keys.empty());
    EXPECT_TRUE(result.unexpected_keys.empty());
    for (const char* name : {"vera_A", "vera_B"}) {
      const at::Tensor t0 = buffer(*model, std::string("lin0.") + name + ".default");
      const at::Tensor t1 = buffer(*model, std::string("lin1.") + name + ".default");
      EXPECT_TRUE(same_tensor(t0, t1)) << name << " low_cpu=" << low_cpu;
      EXPECT_TRUE(torch::equal(t0, state[std::string("base_model.") + name])) << name << " low_cpu=" << low_cpu;
    }
    torch::NoGradGuard no_grad;
    EXPECT_LT(max_abs_diff(model->forward(mlp_input()), [&] {
                Mlp reference = seeded_mlp();
                peft::inject_adapter_in_model(config(), reference);
                peft::set_peft_model_state_dict(*reference, state);
                return reference->forward(mlp_input());
              }()),
              1e-6);
  }
}

TEST(Vera, SecondAdapterHasItsOwnProjectionsAndDeleteRemovesThem) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(4), model);
  peft::inject_adapter_in_model(config(2), model, "other");
  const at::Tensor a_default = buffer(*model, "lin0.vera_A.default");
  const at::Tensor a_other = buffer(*model, "lin0.vera_A.other");
  EXPECT_FALSE(same_tensor(a_default, a_other));
  EXPECT_TRUE(same_tensor(a_other, buffer(*model, "lin1.vera_A.other")));
  EXPECT_EQ(a_other.sizes().vec(), (std::vector<int64_t>{2, 24}));
  // Same key, so the same draws: the rank-2 projection is the first rows of the rank-4 one.
  EXPECT_TRUE(torch::equal(a_other, a_default.narrow(0, 0, 2)));
  EXPECT_EQ(peft::get_peft_model_state_dict(*model, "other")["base_model.vera_A"].sizes().vec(),
            (std::vector<int64_t>{2, 24}));

  peft::set_adapter(model, "default");
  const at::Tensor with_default = model->forward(mlp_input());
  peft::delete_adapter(model, "other");
  for (const auto& b : model->named_buffers()) EXPECT_EQ(b.key().find(".other"), std::string::npos) << b.key();
  EXPECT_TRUE(has_buffer(*model, "lin1.vera_B.default"));
  EXPECT_LT(max_abs_diff(model->forward(mlp_input()), with_default), 1e-6);
  peft::delete_adapter(model, "default");
  EXPECT_TRUE(model->named_buffers().is_empty());
  EXPECT_TRUE(peft::targeted_module_names(model).empty());
}

TEST(Vera, AdaptersMustShareTheKeyAndTheSaveProjectionSetting) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(config().projection_prng_key(3), model, "other");
    ADD_FAILURE() << "a second key was accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_STREQ(e.what(), "Vera PRNG initialisation key must be the same for all adapters. Got "
                           "config.projection_prng_key=3 but previous config had 0.");
  }
  try {
    peft::inject_adapter_in_model(config().save_projection(false), model, "other");
    ADD_FAILURE() << "mixed save_projection was accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_STREQ(e.what(), "VeRA projection weights must be saved for all adapters or none, but got multiple different "
                           "values: [False, True]");
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  EXPECT_EQ(peft::adapter_names(model), std::vector<std::string>{"default"});
}

TEST(Vera, ConfigChecksUsePythonsTexts) {
  WarningCapture warnings;
  auto rejects = [](const json& fields, const std::string& text) { expect_config_error("VERA", fields, text); };
  rejects({{"r", 0}}, "`r` should be a positive integer value but the value passed is 0");
  rejects({{"bias", "lora_only"}}, "\"vera_only\"");
  rejects({{"vera_dropout", 1.5}}, "vera_dropout");
  rejects({{"layers_pattern", "blocks"}}, "When `layers_pattern` is specified, `layers_to_transform` must also be specified.");
  rejects({{"exclude_modules", {"lin0"}}}, "exclude_modules");

  WarningCapture saving;
  config().save_projection(false).validate();
  EXPECT_TRUE(saving.contains("Specified to not save vera_A and vera_B within the state dictionary"));
}

// The vera_mlp vector (Python, save_projection=true, key 0) loaded as a save_projection=false adapter without its
// projections: the regenerated ones must be Python's, bit for bit.
TEST(Vera, WithoutSavedProjectionsTheyAreRegeneratedAsPythonDrawsThem) {
  const VectorCase c = VectorCase::load("vera_mlp");
  const peft::StateDict python = c.tensors("peft_state_dict.safetensors");
  const fs::path dir = temp_dir("regenerated");
  json adapter_config = c.json("adapter_config.json");
  adapter_config["save_projection"] = false;
  std::ofstream(dir / "adapter_config.json") << adapter_config.dump(2);
  peft::StateDict without;
  for (const auto& item : peft::safetensors::load_file((c.dir / "adapter_model.safetensors").string())) {
    if (item.key().rfind("base_model.vera_", 0) != 0) without.insert(item.key(), item.value());
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
    EXPECT_TRUE(warnings.contains("relying on PRNG initialisation to restore these projections"));
    EXPECT_TRUE(torch::equal(buffer(*model, "lin0.vera_A.default"), python["base_model.vera_A"]));
    EXPECT_TRUE(torch::equal(buffer(*model, "lin1.vera_B.default"), python["base_model.vera_B"]));
    EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output.safetensors")), 1e-5) << "low_cpu=" << low_cpu;
    const peft::StateDict ours = peft::get_peft_model_state_dict(*model);
    EXPECT_FALSE(ours.contains("base_model.vera_A"));
    EXPECT_EQ(ours.size(), 4u);
  }

  // A file that holds them anyway: Python warns and leaves them unloaded (unexpected keys).
  WarningCapture warnings;
  std::filesystem::copy_file(c.dir / "adapter_model.safetensors", dir / "adapter_model.safetensors",
                             fs::copy_options::overwrite_existing);
  VectorModel model = base_model(c);
  const peft::LoadResult result = peft::load_adapter(*model, dir.string());
  EXPECT_TRUE(warnings.contains("Specified to not load vera_A and vera_B from state dictionary however they are present"));
  std::vector<std::string> unexpected = result.unexpected_keys;
  std::sort(unexpected.begin(), unexpected.end());
  EXPECT_EQ(unexpected, (std::vector<std::string>{"base_model.vera_A", "base_model.vera_B"}));
}

// Another key and a layer set whose largest in / out features come from different layers, checked against
// Python's own VeraModel (tests/data/methods/make_reference.py).
TEST(Vera, ProjectionsMatchPythonForOtherKeysAndShapes) {
  WarningCapture warnings;
  const peft::StateDict python = peft::safetensors::load_file(
      (methods_data() / "vera" / "projections_key123.safetensors").string());
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config().projection_prng_key(123).save_projection(false), model);
  EXPECT_TRUE(torch::equal(buffer(*model, "lin0.vera_A.default"), python["vera_A"]));
  EXPECT_TRUE(torch::equal(buffer(*model, "lin1.vera_B.default"), python["vera_B"]));
}

TEST(Vera, InitialisationFollowsPythonsSeed) {
  WarningCapture warnings;
  expect_python_initialisation("vera_mlp");  // init_weights=false: lambda_d ~ randn, the projections from key 0
}

TEST(Vera, MisshapedOrMissingProjectionIsRefusedByNameAndChangesNothing) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  const peft::StateDict good = peft::get_peft_model_state_dict(*model);
  const ModelSnapshot before(*model);
  const auto buffers_before = buffers_of(*model);

  auto with = [&](const std::string& key, const at::Tensor& value) {
    peft::StateDict out;
    for (const auto& item : good) out.insert(item.key(), item.key() == key ? value : item.value() + 1);
    return out;
  };
  const std::vector<peft::StateDict> bad{with("base_model.vera_A", torch::zeros({4, 16})),
                                         with("base_model.vera_B", torch::zeros({24, 4}, torch::kLong))};
  for (const peft::StateDict& state : bad) {
    try {
      peft::set_peft_model_state_dict(*model, state);
      ADD_FAILURE() << "accepted";
    } catch (const peft::StateDictError& e) {
      EXPECT_NE(std::string(e.what()).find("base_model.vera_"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(ModelSnapshot(*model) == before);
    EXPECT_TRUE(same_buffers(buffers_of(*model), buffers_before));
  }
  // Missing: Python's error.
  peft::StateDict missing;
  for (const auto& item : good) {
    if (item.key() != "base_model.vera_A") missing.insert(item.key(), item.value() + 1);
  }
  try {
    peft::set_peft_model_state_dict(*model, missing);
    ADD_FAILURE() << "accepted";
  } catch (const peft::StateDictError& e) {
    EXPECT_STREQ(e.what(), "Specified to load vera_A and vera_B from state dictionary however they were not present!");
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);

  // Through a file: the injection checks the shape before attaching anything.
  const fs::path dir = temp_dir("misshaped");
  peft::save_adapter(*model, dir.string());
  peft::StateDict file = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
  file["base_model.vera_A"] = torch::zeros({4, 10});
  peft::safetensors::save_file(file, (dir / "adapter_model.safetensors").string());
  Mlp fresh = seeded_mlp();
  const ModelSnapshot fresh_before(*fresh);
  try {
    peft::load_adapter(fresh, dir.string());
    ADD_FAILURE() << "accepted";
  } catch (const peft::StateDictError& e) {
    EXPECT_NE(std::string(e.what()).find("base_model.vera_A has shape [4, 10]"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*fresh) == fresh_before);
  EXPECT_TRUE(fresh->named_buffers().is_empty());
}

TEST(Vera, StateDictInjectionKeepsTheSharedKeyOutOfTheLayerSelection) {
  WarningCapture warnings;
  Mlp source = seeded_mlp();
  peft::inject_adapter_in_model(config(), source);
  const peft::StateDict state = peft::get_peft_model_state_dict(*source);
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(peft::VeraConfig().r(4), model, "default", false, state);
  EXPECT_EQ(peft::targeted_module_names(model), (std::vector<std::string>{"lin0", "lin1"}));
  peft::set_peft_model_state_dict(*model, state);
  EXPECT_LT(max_abs_diff(model->forward(mlp_input()), source->forward(mlp_input())), 1e-6);
}

TEST(Vera, CastsAndDevicePlacementKeepTheProjectionShared) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  peft::cast_adapter_dtype(model, "default", torch::kDouble);
  EXPECT_EQ(buffer(*model, "lin0.vera_A.default").scalar_type(), torch::kDouble);
  EXPECT_TRUE(same_tensor(buffer(*model, "lin0.vera_A.default"), buffer(*model, "lin1.vera_A.default")));

  const fs::path dir = temp_dir("cast");
  peft::save_adapter(*model, dir.string());
  Mlp loaded = seeded_mlp();
  peft::LoadAdapterOptions options;
  options.dtype = torch::kHalf;
  options.autocast_adapter_dtype = false;
  peft::load_adapter(loaded, dir.string(), "default", options);
  EXPECT_EQ(buffer(*loaded, "lin1.vera_B.default").scalar_type(), torch::kHalf);
  EXPECT_TRUE(same_tensor(buffer(*loaded, "lin0.vera_B.default"), buffer(*loaded, "lin1.vera_B.default")));
}

TEST(Vera, LayersToTransformSelectsLayersAndSizesTheProjections) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("lora_blocks_layers_to_transform");
  VectorModel model = base_model(c);
  json j = {{"peft_type", "VERA"}, {"r", 4}, {"target_modules", {"fc1", "fc2"}}, {"layers_to_transform", {1}},
            {"layers_pattern", "blocks"}, {"init_weights", false}};
  peft::inject_adapter_in_model(*peft::config_from_json_string(j.dump()), model);
  EXPECT_EQ(peft::targeted_module_names(model),
            (std::vector<std::string>{"encoder.blocks.1.fc1", "encoder.blocks.1.fc2"}));
  // fc1 is 8 -> 16, fc2 16 -> 8.
  EXPECT_EQ(buffer(*model, "encoder.blocks.1.fc1.vera_A.default").sizes().vec(), (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(buffer(*model, "encoder.blocks.1.fc2.vera_B.default").sizes().vec(), (std::vector<int64_t>{16, 4}));
}

TEST(Vera, TransposedLayersMergeLikeTheirForward) {
  WarningCapture warnings;
  OddLayers model;
  model->eval();
  peft::inject_adapter_in_model(peft::VeraConfig().r(4).init_weights(false).target_modules({"conv1d"}), model);
  EXPECT_TRUE(warnings.contains("fan_in_fan_out is set to False but the target module is `Conv1D`"));
  const at::Tensor x = torch::randint(0, 10, {2, 3});
  const at::Tensor adapted = model->forward(x);
  peft::merge_and_unload(model);
  EXPECT_LT(max_abs_diff(model->forward(x), adapted), 1e-5);
}

TEST(Vera, OfflineMergeUsesTheSharedProjections) {
  WarningCapture warnings;
  expect_offline_merge_matches("vera_mlp");
}

}  // namespace
}  // namespace peft_test
