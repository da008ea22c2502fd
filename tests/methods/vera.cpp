// VeRA: the variant suites, and what is special about it: the projections vera_A / vera_B are one tensor per
// adapter shared by every adapted layer (saved once as "base_model.vera_A"), regenerated from projection_prng_key
// exactly as Python draws them when save_projection=false, and Python's checks on load. What every shared-basis method
// must do (second adapters, checks across adapters, casts, layer selection, offline merge) is in
// shared_basis_suite.cpp.

#include <filesystem>
#include <fstream>

#include "methods/shared_tensor_checks.h"
#include "support/snapshot.h"
#include "support/warnings.h"

namespace peft_test::vera_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

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
  const at::Tensor a0 = named_buffer(*model, "lin0.vera_A.default");
  const at::Tensor a1 = named_buffer(*model, "lin1.vera_A.default");
  EXPECT_TRUE(same_tensor(a0, a1));
  EXPECT_TRUE(same_tensor(named_buffer(*model, "lin0.vera_B.default"), named_buffer(*model, "lin1.vera_B.default")));
  EXPECT_EQ(a0.sizes().vec(), (std::vector<int64_t>{4, 24}));
  EXPECT_EQ(named_buffer(*model, "lin0.vera_B.default").sizes().vec(), (std::vector<int64_t>{24, 4}));
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
    if (low_cpu) EXPECT_TRUE(named_buffer(*model, "lin0.vera_A.default").device().is_meta());
    const peft::LoadResult result = peft::set_peft_model_state_dict(*model, state, "default", low_cpu);
    EXPECT_TRUE(result.missing_keys.empty());
    EXPECT_TRUE(result.unexpected_keys.empty());
    for (const char* name : {"vera_A", "vera_B"}) {
      const at::Tensor t0 = named_buffer(*model, std::string("lin0.") + name + ".default");
      const at::Tensor t1 = named_buffer(*model, std::string("lin1.") + name + ".default");
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

// The suite (shared_basis_suite.cpp) checks that a second adapter gets its own projections; with VeRA they come
// from the same draws.
TEST(Vera, ASmallerRankTakesTheFirstRowsOfTheSameDraws) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(4), model);
  peft::inject_adapter_in_model(config(2), model, "other");
  const at::Tensor a_other = named_buffer(*model, "lin0.vera_A.other");
  EXPECT_EQ(a_other.sizes().vec(), (std::vector<int64_t>{2, 24}));
  EXPECT_TRUE(torch::equal(a_other, named_buffer(*model, "lin0.vera_A.default").narrow(0, 0, 2)));
  EXPECT_EQ(peft::get_peft_model_state_dict(*model, "other")["base_model.vera_A"].sizes().vec(),
            (std::vector<int64_t>{2, 24}));
}

TEST(Vera, NotSavingTheProjectionsWarnsAsPythonDoes) {
  WarningCapture saving;
  config().save_projection(false).validate();
  EXPECT_TRUE(saving.contains("Specified to not save vera_A and vera_B within the state dictionary"));
}

// The suite (shared_basis_suite.cpp) regenerates the projections of a save_projection=false file; a file that holds
// them anyway: Python warns and leaves them unloaded (unexpected keys).
TEST(Vera, ProjectionsInAFileThatShouldNotHoldThemAreLeftUnloaded) {
  const VectorCase c = VectorCase::load("vera_mlp");
  const fs::path dir = temp_dir("unwanted");
  json adapter_config = c.json("adapter_config.json");
  adapter_config["save_projection"] = false;
  std::ofstream(dir / "adapter_config.json") << adapter_config.dump(2);
  fs::copy_file(c.dir / "adapter_model.safetensors", dir / "adapter_model.safetensors");
  WarningCapture warnings;
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
  EXPECT_TRUE(torch::equal(named_buffer(*model, "lin0.vera_A.default"), python["vera_A"]));
  EXPECT_TRUE(torch::equal(named_buffer(*model, "lin1.vera_B.default"), python["vera_B"]));
}

TEST(Vera, InitialisationFollowsPythonsSeed) {
  WarningCapture warnings;
  expect_python_initialisation("vera_mlp");  // init_weights=false: lambda_d ~ randn, the projections from key 0
}

TEST(Vera, MisshapedOrMissingProjectionInAStateDictIsRefusedByNameAndChangesNothing) {
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
}

}  // namespace
}  // namespace peft_test::vera_test
