// The checks every method with frozen random bases shared by all layers of an adapter must pass (VeRA, PVeRA,
// RandLoRA):
// a second adapter gets its own bases and deleting it removes them, Python's checks across adapters, state-dict
// injection, casts, layer selection, misshaped bases in a file, Conv1D-style layers, offline merge. What is
// special about one method stays in tests/methods/<method>.cpp.

#include <filesystem>
#include <fstream>

#include "methods/shared_tensor_checks.h"
#include "support/layers.h"
#include "support/snapshot.h"
#include "support/warnings.h"

namespace peft_test::shared_basis_suite_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class SharedBases : public testing::TestWithParam<SharedBasisMethod> {
 protected:
  const SharedBasisMethod& method() const { return GetParam(); }
  std::string a() const { return method().prefix + "_A"; }
  std::string b() const { return method().prefix + "_B"; }

  /// The method's config on the Mlp's lin0/lin1 (random init), with `extra` fields on top.
  std::shared_ptr<peft::PeftConfig> config(int64_t r = 4, const json& extra = json::object()) const {
    json j = method().fields;
    j["peft_type"] = method().peft_type;
    j["r"] = r;
    j["init_weights"] = false;
    j["target_modules"] = {"lin0", "lin1"};
    for (const auto& [key, value] : extra.items()) j[key] = value;
    return peft::config_from_json_string(j.dump());
  }

  fs::path temp_dir(const std::string& name) const { return fresh_temp_dir(method().prefix + "_shared", name); }
};

TEST_P(SharedBases, SecondAdapterHasItsOwnBasesAndDeleteRemovesThem) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(*config(4), model);
  peft::inject_adapter_in_model(*config(6), model, "other");
  const at::Tensor a_other = named_buffer(*model, "lin0." + a() + ".other");
  EXPECT_FALSE(same_tensor(named_buffer(*model, "lin0." + a() + ".default"), a_other));
  EXPECT_TRUE(same_tensor(a_other, named_buffer(*model, "lin1." + a() + ".other")));
  EXPECT_EQ(a_other.size(0), 6 * method().a_rows_per_rank);

  peft::set_adapter(model, "default");
  const at::Tensor with_default = model->forward(mlp_input());
  peft::delete_adapter(model, "other");
  for (const auto& buffer : model->named_buffers()) EXPECT_EQ(buffer.key().find(".other"), std::string::npos) << buffer.key();
  EXPECT_NO_THROW(named_buffer(*model, "lin1." + b() + ".default"));
  EXPECT_LT(max_abs_diff(model->forward(mlp_input()), with_default), 1e-6);
  peft::delete_adapter(model, "default");
  EXPECT_TRUE(model->named_buffers().is_empty());
  EXPECT_TRUE(peft::targeted_module_names(model).empty());
}

TEST_P(SharedBases, AdaptersMustShareTheKeyAndTheSaveProjectionSetting) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(*config(), model);
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(*config(4, {{"projection_prng_key", 3}}), model, "other");
    ADD_FAILURE() << "a second key was accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), method().key_error + " PRNG initialisation key must be the same for all adapters. "
                                                          "Got config.projection_prng_key=3 but previous config had 0.");
  }
  try {
    peft::inject_adapter_in_model(*config(4, {{"save_projection", false}}), model, "other");
    ADD_FAILURE() << "mixed save_projection was accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), method().save_error + " projection weights must be saved for all adapters or "
                                                           "none, but got multiple different values: " +
                                         method().save_values);
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  EXPECT_EQ(peft::adapter_names(model), std::vector<std::string>{"default"});
}

TEST_P(SharedBases, ConfigChecksUsePythonsTexts) {
  WarningCapture warnings;
  const std::string type = method().peft_type;
  expect_config_error(type, {{"r", 0}}, "`r` should be a positive integer value but the value passed is 0");
  expect_config_error(type, {{"bias", "lora_only"}}, "\"" + method().prefix + "_only\"");
  expect_config_error(type, {{method().prefix + "_dropout", 1.5}}, method().prefix + "_dropout");
  expect_config_error(type, {{"layers_pattern", "blocks"}},
                      "When `layers_pattern` is specified, `layers_to_transform` must also be specified.");
  expect_config_error(type, {{"exclude_modules", {"lin0"}}}, "exclude_modules");
}

// The shared keys (base_model.<prefix>_A) name no layer: only the layers the per-layer keys name are adapted.
TEST_P(SharedBases, StateDictInjectionAdaptsTheLayersItsKeysName) {
  WarningCapture warnings;
  Mlp source = seeded_mlp();
  peft::inject_adapter_in_model(*config(4, {{"target_modules", {"lin1"}}}), source);
  const peft::StateDict state = peft::get_peft_model_state_dict(*source);
  Mlp model = seeded_mlp();
  json bare = method().fields;
  bare["peft_type"] = method().peft_type;
  bare["r"] = 4;
  peft::inject_adapter_in_model(*peft::config_from_json_string(bare.dump()), model, "default", false, state);
  EXPECT_EQ(peft::targeted_module_names(model), (std::vector<std::string>{"lin1"}));
  peft::set_peft_model_state_dict(*model, state);
  EXPECT_LT(max_abs_diff(model->forward(mlp_input()), source->forward(mlp_input())), 1e-6);
}

TEST_P(SharedBases, CastsAndLoadingKeepTheBasesShared) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(*config(), model);
  peft::cast_adapter_dtype(model, "default", torch::kDouble);
  EXPECT_EQ(named_buffer(*model, "lin0." + a() + ".default").scalar_type(), torch::kDouble);
  EXPECT_TRUE(same_tensor(named_buffer(*model, "lin0." + a() + ".default"), named_buffer(*model, "lin1." + a() + ".default")));

  const fs::path dir = temp_dir("cast");
  peft::save_adapter(*model, dir.string());
  for (const c10::ScalarType dtype : {torch::kHalf, torch::kFloat}) {
    Mlp loaded = seeded_mlp();
    peft::LoadAdapterOptions options;
    options.dtype = dtype;
    options.autocast_adapter_dtype = false;
    peft::load_adapter(loaded, dir.string(), "default", options);
    EXPECT_EQ(named_buffer(*loaded, "lin1." + b() + ".default").scalar_type(), dtype);
    EXPECT_TRUE(
        same_tensor(named_buffer(*loaded, "lin0." + b() + ".default"), named_buffer(*loaded, "lin1." + b() + ".default")));
  }
}

TEST_P(SharedBases, MisshapedBasesInAFileAreRefusedByNameAndChangeNothing) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(*config(), model);
  const fs::path dir = temp_dir("misshaped");
  peft::save_adapter(*model, dir.string());
  for (const std::string& key : method().bad_keys) {
    peft::StateDict file = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
    ASSERT_TRUE(file.contains(key)) << key;
    file[key] = torch::zeros(method().bad_a_shape);
    const fs::path bad = temp_dir("misshaped_" + std::to_string(&key - method().bad_keys.data()));
    fs::copy_file(dir / "adapter_config.json", bad / "adapter_config.json");
    peft::safetensors::save_file(file, (bad / "adapter_model.safetensors").string());
    Mlp fresh = seeded_mlp();
    const ModelSnapshot fresh_before(*fresh);
    try {
      peft::load_adapter(fresh, bad.string());
      ADD_FAILURE() << key << " accepted";
    } catch (const peft::StateDictError& e) {
      // Named as the model reads it: a layer's key without save_pretrained's "base_model.model." prefix.
      const std::string layer_prefix = "base_model.model.";
      const std::string named = key.rfind(layer_prefix, 0) == 0 ? key.substr(layer_prefix.size()) : key;
      EXPECT_NE(std::string(e.what()).find(named + " has shape " + c10::str(at::IntArrayRef(method().bad_a_shape))),
                std::string::npos)
          << e.what();
    }
    EXPECT_TRUE(ModelSnapshot(*fresh) == fresh_before);
    EXPECT_TRUE(fresh->named_buffers().is_empty());
  }
}

// The <prefix>_mlp case (Python, save_projection=true, key 0) loaded as a save_projection=false adapter without its
// bases: the regenerated ones must be Python's, bit for bit.
TEST_P(SharedBases, WithoutSavedBasesTheyAreRegeneratedAsPythonDrawsThem) {
  const VectorCase c = VectorCase::load(method().prefix + "_mlp");
  const peft::StateDict python = c.tensors("peft_state_dict.safetensors");
  const fs::path dir = temp_dir("regenerated");
  json adapter_config = c.json("adapter_config.json");
  adapter_config["save_projection"] = false;
  std::ofstream(dir / "adapter_config.json") << adapter_config.dump(2);
  auto is_basis = [&](const std::string& key) {
    const std::string last = key.substr(key.rfind('.') + 1);
    return last == a() || last == b();
  };
  peft::StateDict without;
  for (const auto& item : peft::safetensors::load_file((c.dir / "adapter_model.safetensors").string())) {
    if (!is_basis(item.key())) without.insert(item.key(), item.value());
  }
  EXPECT_EQ(without.size(), 4u);
  peft::safetensors::save_file(without, (dir / "adapter_model.safetensors").string());
  // Python's state dict holds them under the model's key (VeRA) or under every layer's (RandLoRA).
  auto python_basis = [&](const std::string& layer, const std::string& name) {
    return python.contains(layer + "." + name) ? python[layer + "." + name] : python["base_model." + name];
  };

  for (bool low_cpu : {false, true}) {
    WarningCapture warnings;
    VectorModel model = base_model(c);
    peft::LoadAdapterOptions options;
    options.low_cpu_mem_usage = low_cpu;
    const peft::LoadResult result = peft::load_adapter(*model, dir.string(), "default", options);
    EXPECT_TRUE(result.missing_keys.empty());
    EXPECT_TRUE(warnings.contains(method().regenerate_warning));
    EXPECT_TRUE(torch::equal(named_buffer(*model, "lin0." + a() + ".default"), python_basis("lin0", a())));
    EXPECT_TRUE(torch::equal(named_buffer(*model, "lin1." + b() + ".default"), python_basis("lin1", b())));
    EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output.safetensors")), 1e-5) << "low_cpu=" << low_cpu;
    const peft::StateDict ours = peft::get_peft_model_state_dict(*model);
    for (const auto& item : ours) EXPECT_FALSE(is_basis(item.key())) << item.key();
    EXPECT_EQ(ours.size(), 4u);
  }
}

TEST_P(SharedBases, LayersToTransformSelectsLayersAndSizesTheBases) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("lora_blocks_layers_to_transform");
  VectorModel model = base_model(c);
  peft::inject_adapter_in_model(
      *config(4, {{"target_modules", {"fc1", "fc2"}}, {"layers_to_transform", {1}}, {"layers_pattern", "blocks"}}),
      model);
  EXPECT_EQ(peft::targeted_module_names(model),
            (std::vector<std::string>{"encoder.blocks.1.fc1", "encoder.blocks.1.fc2"}));
  // fc1 is 8 -> 16, fc2 16 -> 8: the bases are sized for the largest of the adapted layers.
  EXPECT_EQ(named_buffer(*model, "encoder.blocks.1.fc1." + a() + ".default").sizes().vec(), method().fc1_a_shape);
  EXPECT_EQ(named_buffer(*model, "encoder.blocks.1.fc2." + b() + ".default").sizes().vec(), method().fc2_b_shape);
}

TEST_P(SharedBases, TransposedLayersMergeLikeTheirForward) {
  WarningCapture warnings;
  OddLayers model;
  model->eval();
  peft::inject_adapter_in_model(*config(4, {{"target_modules", {"conv1d"}}}), model);
  EXPECT_TRUE(warnings.contains("fan_in_fan_out is set to False but the target module is `Conv1D`"));
  const at::Tensor x = torch::randint(0, 10, {2, 3});
  const at::Tensor adapted = model->forward(x);
  peft::merge_and_unload(model);
  EXPECT_LT(max_abs_diff(model->forward(x), adapted), method().transposed_merge_atol);
}

TEST_P(SharedBases, OfflineMergeUsesTheSharedBases) {
  WarningCapture warnings;
  expect_offline_merge_matches(method().prefix + "_mlp");
}

INSTANTIATE_TEST_SUITE_P(
    Methods, SharedBases,
    testing::Values(SharedBasisMethod{"VERA",
                                      "vera",
                                      "Vera",
                                      "VeRA",
                                      json::object(),
                                      {4, 10},
                                      {"base_model.vera_A"},
                                      {4, 16},
                                      {16, 4},
                                      1e-5,
                                      "relying on PRNG initialisation to restore these projections",
                                      1,
                                      "[False, True]"},
                    SharedBasisMethod{"PVERA",
                                      "pvera",
                                      "PVeRA",
                                      "PVeRA",
                                      json::object(),
                                      {4, 10},
                                      {"base_model.pvera_A"},
                                      {8, 16},
                                      {16, 4},
                                      1e-5,
                                      "relying on PRNG initialisation to restore these projections",
                                      2,
                                      "{False, True}"},
                    SharedBasisMethod{"RANDLORA",
                                      "randlora",
                                      "RandLora",
                                      "RandLora",
                                      {{"randlora_alpha", 8}},
                                      {4, 1, 10},
                                      {"base_model.randlora_A", "base_model.model.lin1.randlora_A"},
                                      {4, 1, 16},
                                      {16, 4, 4},
                                      1e-4,
                                      "Specified to not save basis_A and basis_B within the state dictionary",
                                      1,
                                      "[False, True]"}),
    [](const testing::TestParamInfo<SharedBasisMethod>& info) { return info.param.prefix; });

}  // namespace
}  // namespace peft_test::shared_basis_suite_test
