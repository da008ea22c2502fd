// get_peft_model_state_dict / set_peft_model_state_dict: keys as Python PEFT writes them, what is
// reported as missing or unexpected, and all-or-nothing loading.

#include <fstream>

#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::state_dict_test {
namespace {

VectorModel mlp() {
  torch::manual_seed(0);
  return VectorModel(VectorCase::load("lora_mlp_basic").model);
}

std::vector<std::string> keys(const peft::StateDict& sd) { return sd.keys(); }

nlohmann::json errors() {
  std::ifstream in(vectors_dir() / "errors" / "errors.json");
  return nlohmann::json::parse(in);
}

TEST(StateDict, KeysDropTheAdapterName) {
  auto model = mlp();
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"lin0", "lin1"}), model, "my_adapter");
  const auto sd = peft::get_peft_model_state_dict(*model, "my_adapter");
  EXPECT_EQ(keys(sd), std::vector<std::string>({"lin0.lora_A.weight", "lin0.lora_B.weight", "lin1.lora_A.weight",
                                                 "lin1.lora_B.weight"}));
  // The tensors are the model's own.
  EXPECT_EQ(sd["lin0.lora_A.weight"].data_ptr(), model->named_parameters()["lin0.lora_A.my_adapter.weight"].data_ptr());
}

TEST(StateDict, BiasModesUsePythonKeys) {
  for (const auto& [bias, expected] : std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"lora_only", {"lin0.lora_A.weight", "lin0.lora_B.weight", "lin0.base_layer.bias"}},
           {"all", {"lin0.lora_A.weight", "lin0.lora_B.weight", "lin0.base_layer.bias", "lin1.bias", "lin2.bias"}}}) {
    auto model = mlp();
    peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}).bias(bias), model);
    EXPECT_EQ(keys(peft::get_peft_model_state_dict(*model)), expected) << bias;
  }
}

TEST(StateDict, EmbeddingAndDoraKeys) {
  torch::manual_seed(0);
  VectorModel model(VectorCase::load("lora_embedding").model);
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"emb"}).use_dora(true), model);
  EXPECT_EQ(keys(peft::get_peft_model_state_dict(*model)),
            std::vector<std::string>({"emb.lora_embedding_A", "emb.lora_embedding_B", "emb.lora_magnitude_vector"}));
}

TEST(StateDict, UnknownAdapterListsTheKnownOnes) {
  auto model = mlp();
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}), model);
  try {
    peft::get_peft_model_state_dict(*model, "nope");
    FAIL();
  } catch (const peft::AdapterNameError& e) {
    EXPECT_NE(std::string(e.what()).find("'default'"), std::string::npos) << e.what();
  }
}

TEST(StateDict, MissingAndUnexpectedKeys) {
  const nlohmann::json e = errors();
  {
    // Python: keys for lin1 in a model where only lin0 has LoRA are unexpected.
    auto model = mlp();
    peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"lin0"}), model);
    peft::StateDict sd;
    sd.insert("lin1.lora_A.weight", torch::zeros({4, 20}));
    sd.insert("lin1.lora_B.weight", torch::zeros({20, 4}));
    const auto result = peft::set_peft_model_state_dict(*model, sd);
    EXPECT_EQ(result.unexpected_keys, e["set_state_dict_keys_for_untargeted_module"]["returned"]["unexpected_keys"].get<std::vector<std::string>>());
    EXPECT_EQ(result.missing_keys, std::vector<std::string>({"lin0.lora_A.weight", "lin0.lora_B.weight"}));
  }
  {
    // Only lin0's keys for a model with LoRA on lin0 and lin1: the adapter's own missing tensors are
    // listed (Python also lists every base weight; those are never part of an adapter checkpoint).
    auto model = mlp();
    peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"lin0", "lin1"}), model);
    peft::StateDict sd;
    sd.insert("lin0.lora_A.weight", torch::zeros({4, 10}));
    sd.insert("lin0.lora_B.weight", torch::zeros({20, 4}));
    const auto result = peft::set_peft_model_state_dict(*model, sd);
    EXPECT_TRUE(result.unexpected_keys.empty());
    EXPECT_EQ(result.missing_keys, std::vector<std::string>({"lin1.lora_A.weight", "lin1.lora_B.weight"}));
    const auto python_missing = e["set_state_dict_missing_adapter_keys"]["returned"]["missing_keys"].get<std::vector<std::string>>();
    EXPECT_NE(std::find(python_missing.begin(), python_missing.end(), "lin1.lora_A.default.weight"), python_missing.end());
  }
}

TEST(StateDict, ShapeMismatchNamesKeysAndChangesNothing) {
  auto model = mlp();
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"lin0"}), model);
  const ModelSnapshot before(*model);
  peft::StateDict sd;
  sd.insert("lin0.lora_A.weight", torch::ones({2, 10}));
  sd.insert("lin0.lora_B.weight", torch::ones({20, 2}));
  try {
    peft::set_peft_model_state_dict(*model, sd);
    FAIL();
  } catch (const peft::StateDictError& err) {
    const std::string expected = errors()["set_state_dict_shape_mismatch"]["message"].get<std::string>();
    // Python names the model class; the per-key lines are identical.
    EXPECT_EQ(std::string(err.what()).substr(std::string(err.what()).find('\n')), expected.substr(expected.find('\n')));
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  // A valid key next to a bad one is not loaded either.
  peft::StateDict mixed;
  mixed.insert("lin0.lora_A.weight", torch::ones({4, 10}));
  mixed.insert("lin0.lora_B.weight", torch::ones({20, 3}));
  EXPECT_THROW(peft::set_peft_model_state_dict(*model, mixed), peft::StateDictError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(StateDict, DtypesConvertButIntegersAreRefused) {
  auto model = mlp();
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"lin0"}), model);
  peft::StateDict half;
  half.insert("lin0.lora_A.weight", torch::full({4, 10}, 0.5, torch::kHalf));
  half.insert("lin0.lora_B.weight", torch::full({20, 4}, 0.25, torch::kBFloat16));
  peft::set_peft_model_state_dict(*model, half);
  auto p = model->named_parameters();
  EXPECT_EQ(p["lin0.lora_A.default.weight"].scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(p["lin0.lora_A.default.weight"], torch::full({4, 10}, 0.5)));
  const ModelSnapshot before(*model);
  peft::StateDict ints;
  ints.insert("lin0.lora_A.weight", torch::ones({4, 10}, torch::kLong));
  EXPECT_THROW(peft::set_peft_model_state_dict(*model, ints), peft::StateDictError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(StateDict, PythonPrefixAndBaseLayerNamesAreAccepted) {
  auto model = mlp();
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"lin0"}).bias("lora_only"), model);
  peft::StateDict sd;
  sd.insert("base_model.model.lin0.lora_A.weight", torch::ones({4, 10}));
  sd.insert("base_model.model.lin0.lora_B.weight", torch::ones({20, 4}));
  sd.insert("base_model.model.lin0.base_layer.bias", torch::full({20}, 3.0));
  const auto result = peft::set_peft_model_state_dict(*model, sd);
  EXPECT_TRUE(result.missing_keys.empty() && result.unexpected_keys.empty());
  EXPECT_TRUE(torch::equal(model->named_parameters()["lin0.bias"], torch::full({20}, 3.0)));
}

TEST(StateDict, MetaAdaptersNeedLowCpuMemUsageToLoad) {
  auto model = mlp();
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"lin0"}), model, "default", true);
  const ModelSnapshot before(*model);
  peft::StateDict sd;
  sd.insert("lin0.lora_A.weight", torch::ones({4, 10}));
  sd.insert("lin0.lora_B.weight", torch::ones({20, 4}));
  try {
    peft::set_peft_model_state_dict(*model, sd);
    FAIL();
  } catch (const peft::StateDictError& e) {
    EXPECT_NE(std::string(e.what()).find("low_cpu_mem_usage"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  peft::set_peft_model_state_dict(*model, sd, "default", true);
  EXPECT_FALSE(model->named_parameters()["lin0.lora_A.default.weight"].device().is_meta());
}

TEST(StateDict, LowCpuMemUsageTakesTheLayerDtype) {
  auto model = mlp();
  model->to(torch::kDouble);
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"lin0"}), model, "default", true);
  EXPECT_EQ(model->named_parameters()["lin0.lora_A.default.weight"].scalar_type(), torch::kDouble);
  peft::StateDict sd;
  sd.insert("lin0.lora_A.weight", torch::ones({4, 10}));
  sd.insert("lin0.lora_B.weight", torch::ones({20, 4}));
  peft::set_peft_model_state_dict(*model, sd, "default", true);
  EXPECT_EQ(model->named_parameters()["lin0.lora_A.default.weight"].scalar_type(), torch::kDouble);
  EXPECT_NO_THROW(model->forward(torch::randn({2, 10}, torch::kDouble)));
}

TEST(StateDict, ModulesToSaveRoundTrip) {
  const VectorCase c = VectorCase::load("lora_mlp_modules_to_save");
  VectorModel model(c.model);
  model->load_base(c.tensors("base.safetensors"));
  peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), model);
  const auto names = model->named_parameters().keys();
  EXPECT_NE(std::find(names.begin(), names.end(), "lin2.modules_to_save.default.weight"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "lin2.weight"), names.end());  // the original keeps its name
  // The saved config has inference_mode = true: nothing trains.
  EXPECT_FALSE(model->named_parameters()["lin2.modules_to_save.default.weight"].requires_grad());
  EXPECT_FALSE(model->named_parameters()["lin2.weight"].requires_grad());
  peft::set_peft_model_state_dict(*model, c.tensors("adapter_model.safetensors"));
  // The copy took the checkpoint's lin2 tensors; the original kept the base ones.
  EXPECT_TRUE(torch::equal(model->named_parameters()["lin2.modules_to_save.default.weight"],
                           c.tensor("adapter_model.safetensors", "base_model.model.lin2.weight")));
  EXPECT_TRUE(torch::equal(model->named_parameters()["lin2.weight"], c.tensor("base.safetensors", "lin2.weight")));
}

TEST(StateDict, ModulesToSaveCopiesTrainWhileTheOriginalDoesNot) {
  auto model = mlp();
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}).modules_to_save({{"lin2"}}), model);
  auto p = model->named_parameters();
  EXPECT_TRUE(p["lin2.modules_to_save.default.weight"].requires_grad());
  EXPECT_TRUE(p["lin2.modules_to_save.default.bias"].requires_grad());
  EXPECT_FALSE(p["lin2.weight"].requires_grad());
  EXPECT_EQ(keys(peft::get_peft_model_state_dict(*model)),
            std::vector<std::string>({"lin0.lora_A.weight", "lin0.lora_B.weight", "lin2.weight", "lin2.bias"}));
  // The copy is what runs: changing it changes the output, changing the original does not.
  const auto x = torch::randn({2, 10});
  torch::NoGradGuard no_grad;
  const auto before = model->forward(x);
  p["lin2.weight"].add_(1.0);
  EXPECT_TRUE(torch::equal(model->forward(x), before));
  p["lin2.modules_to_save.default.weight"].add_(1.0);
  EXPECT_FALSE(torch::equal(model->forward(x), before));
}

}  // namespace
}  // namespace peft_test::state_dict_test
