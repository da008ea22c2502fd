// VB-LoRA: the variant suites, and what is special about it: one vector bank per adapter shared (and trained) by
// every adapted layer, saved once as "base_model.vblora_vector_bank"; save_only_topk_weights checkpoints as Python
// writes and reads them; Python's checks of the layer sizes.

#include <filesystem>
#include <fstream>

#include "methods/shared_tensor_checks.h"
#include "support/layers.h"
#include "support/snapshot.h"
#include "support/warnings.h"

namespace peft_test::vblora_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    VBLoRA, MethodVariants,
    testing::Values(Variant{"vblora", false,
                            {{"peft_type", "VBLORA"}, {"target_modules", kMlpTargets}, {"r", 4}, {"num_vectors", 8},
                             {"vector_length", 8}}},
                    Variant{"vblora_topk3_dropout", false,
                            {{"peft_type", "VBLORA"},
                             {"target_modules", kMlpTargets},
                             {"r", 3},
                             {"num_vectors", 6},
                             {"vector_length", 4},
                             {"topk", 3},
                             {"vblora_dropout", 0.1},
                             {"init_vector_bank_bound", 0.5}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(VBLoRA, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"VBLORA", "emb", {{"vector_length", 4}, {"num_vectors", 4}}}),
                         UnsupportedLayerName());

peft::VBLoRAConfig config() {
  return peft::VBLoRAConfig().r(4).num_vectors(8).vector_length(8).target_modules({"lin0", "lin1"});
}

fs::path temp_dir(const std::string& name) { return fresh_temp_dir("vblora", name); }

fs::path topk_reference() { return methods_data() / "vblora" / "topk"; }

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(VBLoRA, TheVectorBankIsOneTrainedTensorSharedByEveryLayer) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  const at::Tensor bank = named_parameter(*model, "lin0.vblora_vector_bank.default");
  EXPECT_TRUE(same_tensor(bank, named_parameter(*model, "lin1.vblora_vector_bank.default")));
  EXPECT_EQ(bank.sizes().vec(), (std::vector<int64_t>{8, 8}));
  EXPECT_TRUE(bank.requires_grad());
  EXPECT_LE(bank.abs().max().item<double>(), 0.02);

  const peft::StateDict state = peft::get_peft_model_state_dict(*model);
  EXPECT_EQ(state.keys(), (std::vector<std::string>{"lin0.vblora_logits_A", "lin0.vblora_logits_B", "lin1.vblora_logits_A",
                                                   "lin1.vblora_logits_B", "base_model.vblora_vector_bank"}));
  // Counted once, as Python counts it: 2 x (A + B logits) + the bank.
  const int64_t logits = 4 * 2 * 8 + 3 * 4 * 8 + 4 * 3 * 8 + 2 * 4 * 8;
  EXPECT_EQ(peft::trainable_parameters(model).trainable, logits + 8 * 8);

  // One gradient for the bank, summed over the layers that use it.
  model->train();
  model->forward(mlp_input()).sum().backward();
  EXPECT_TRUE(bank.grad().defined());
}

TEST(VBLoRA, InitialisationFollowsPythonsSeed) {
  WarningCapture warnings;
  expect_python_initialisation("vblora_mlp");  // the bank (drawn again for each layer, as Python does) and logits
}

// tests/data/methods/vblora/topk: Python's save_pretrained of the vblora_mlp adapter with save_only_topk_weights.
TEST(VBLoRA, TopkCheckpointsAreWrittenAndReadAsPythonDoes) {
  const VectorCase c = VectorCase::load("vblora_mlp");
  for (bool low_cpu : {false, true}) {
    WarningCapture warnings;
    VectorModel model = base_model(c);
    peft::LoadAdapterOptions options;
    options.low_cpu_mem_usage = low_cpu;
    const peft::LoadResult result = peft::load_adapter(*model, topk_reference().string(), "default", options);
    EXPECT_TRUE(result.missing_keys.empty());
    EXPECT_TRUE(result.unexpected_keys.empty()) << result.unexpected_keys.front();
    EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output.safetensors")), 1e-5) << "low_cpu=" << low_cpu;
    // Logits outside the top k are -inf: for inference and merging only, as in Python.
    EXPECT_TRUE(torch::isinf(named_parameter(*model, "lin0.vblora_logits_A.default")).any().item<bool>());
    peft::merge_adapter(model);
    EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output_merged.safetensors")), 1e-5);
    peft::unmerge_adapter(model);
    model->train();
    try {
      model->forward(c.input());
      ADD_FAILURE() << "trained from a top-k checkpoint";
    } catch (const peft::Error& e) {
      EXPECT_NE(std::string(e.what()).find("Found infinity values in VB-LoRA logits"), std::string::npos) << e.what();
    }
  }

  // Saving: the full adapter under a save_only_topk_weights config gives Python's file byte for byte.
  WarningCapture warnings;
  VectorModel model = base_model(c);
  peft::inject_adapter_in_model(*peft::load_config((topk_reference() / "adapter_config.json").string()), model);
  peft::set_peft_model_state_dict(*model, c.tensors("adapter_model.safetensors"));
  const peft::StateDict state = peft::get_peft_model_state_dict(*model);
  EXPECT_EQ(state["lin0.vblora_logits_A_topk_indices"].scalar_type(), torch::kByte);
  EXPECT_EQ(state["lin1.vblora_logits_B_topk_weights"].sizes().vec(), (std::vector<int64_t>{10, 4, 1}));
  const fs::path out = temp_dir("topk");
  peft::save_adapter(*model, out.string());
  EXPECT_EQ(read_bytes(out / "adapter_model.safetensors"), read_bytes(topk_reference() / "adapter_model.safetensors"));
}

TEST(VBLoRA, MalformedTopkPairsAreRefusedByName) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("vblora_mlp");
  const peft::StateDict file = peft::safetensors::load_file((topk_reference() / "adapter_model.safetensors").string());
  VectorModel model = base_model(c);
  peft::inject_adapter_in_model(*peft::load_config((topk_reference() / "adapter_config.json").string()), model);
  const ModelSnapshot before(*model);
  auto edited = [&](const std::string& key, std::optional<at::Tensor> value) {
    peft::StateDict out;
    for (const auto& item : file) {
      if (item.key() != key) out.insert(item.key(), item.value());
      else if (value) out.insert(item.key(), *value);
    }
    return out;
  };
  const std::string indices = "base_model.model.lin0.vblora_logits_A_topk_indices";
  const std::string weights = "base_model.model.lin0.vblora_logits_A_topk_weights";
  const std::vector<std::pair<peft::StateDict, std::string>> cases{
      {edited(weights, std::nullopt), "no " + weights},
      {edited(indices, torch::full({4, 5, 2}, 16, torch::kByte)), "the bank has 16 vectors"},
      {edited(indices, torch::zeros({4, 5, 3}, torch::kByte)), "do not fit"},
      {edited(weights, torch::zeros({4, 5, 1}, torch::kLong)), "not floating point"},
  };
  for (const auto& [state, text] : cases) {
    try {
      peft::set_peft_model_state_dict(*model, state);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const peft::StateDictError& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("lin0.vblora_logits_A"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(ModelSnapshot(*model) == before);
  }
}

TEST(VBLoRA, VectorLengthMustDivideTheLayerSizes) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(config().vector_length(16), model);  // lin0 is 16 -> 24
    ADD_FAILURE() << "accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "`out_features` 24 must be divisible by `vector_length` 16 (layer 'lin0')");
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(VBLoRA, ConfigChecksUsePythonsTexts) {
  WarningCapture warnings;
  auto rejects = [](const json& fields, const std::string& text) { expect_config_error("VBLORA", fields, text); };
  rejects({{"r", 0}}, "`r` 0 should be a positive integer value");
  rejects({{"topk", -1}}, "`topk` -1 should be a positive integer value");
  rejects({{"topk", 9}, {"num_vectors", 8}}, "`topk` 9 must not exceed `num_vectors` 8");
  rejects({{"vector_length", 0}}, "`vector_length` should be a positive integer value");
  rejects({{"bias", "lora_only"}}, "\"vblora_only\"");
  rejects({{"layers_pattern", "blocks"}}, "When `layers_pattern` is specified, `layers_to_transform` must also be specified.");
}

TEST(VBLoRA, SecondAdapterHasItsOwnBankAndDeleteRemovesIt) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config(), model);
  peft::inject_adapter_in_model(config().num_vectors(4).target_modules({"lin1"}), model, "other");
  const at::Tensor mine = named_parameter(*model, "lin1.vblora_vector_bank.default");
  const at::Tensor theirs = named_parameter(*model, "lin1.vblora_vector_bank.other");
  EXPECT_FALSE(same_tensor(mine, theirs));
  EXPECT_EQ(theirs.size(0), 4);
  EXPECT_EQ(peft::get_peft_model_state_dict(*model, "other")["base_model.vblora_vector_bank"].size(0), 4);
  peft::delete_adapter(model, "default");
  for (const auto& p : model->named_parameters()) EXPECT_EQ(p.key().find(".default"), std::string::npos) << p.key();
  EXPECT_EQ(peft::targeted_module_names(model), std::vector<std::string>{"lin1"});
}

TEST(VBLoRA, ExcludeAndLayersToTransformSelectLayers) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(config().exclude_modules({"lin0"}), model);
  EXPECT_EQ(peft::targeted_module_names(model), std::vector<std::string>{"lin1"});

  const VectorCase c = VectorCase::load("lora_blocks_layers_to_transform");
  VectorModel blocks = base_model(c);
  json j = {{"peft_type", "VBLORA"}, {"r", 2}, {"num_vectors", 4}, {"vector_length", 4}, {"target_modules", {"fc1"}},
            {"layers_to_transform", {0, 2}}, {"layers_pattern", "blocks"}};
  peft::inject_adapter_in_model(*peft::config_from_json_string(j.dump()), blocks);
  EXPECT_EQ(peft::targeted_module_names(blocks),
            (std::vector<std::string>{"encoder.blocks.0.fc1", "encoder.blocks.2.fc1"}));
}

TEST(VBLoRA, OfflineMergeUsesTheSharedBank) {
  WarningCapture warnings;
  expect_offline_merge_matches("vblora_mlp");
}

}  // namespace
}  // namespace peft_test::vblora_test
