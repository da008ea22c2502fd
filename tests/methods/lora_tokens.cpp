// LoRA with trainable_token_indices (Python PEFT's TrainableTokensWrapper beside the LoRA layers) and
// ensure_weight_tying, against Python PEFT's files and outputs (tests/data/methods/lora_tokens/, made by its
// make_reference.py): loading Python's adapters, outputs (active, disabled, merged), gradients, the files
// save_adapter writes, and the errors Python raises.

#include <torch/torch.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include <peft/offline_merge.h>
#include <peft/peft.h>
#include <peft/tuners/lora/weighted_adapter.h>

#include "support/errors.h"
#include "support/layers.h"
#include "support/vectors.h"
#include "support/warnings.h"
#include "support/scratch.h"

namespace peft_test::lora_tokens_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path data_dir() { return cases_dir().parent_path() / "methods" / "lora_tokens"; }

// The reference's LM: lm_head(relu(proj(embed_tokens(x)))); "tied" shares embed_tokens.weight with lm_head.
struct LMImpl : torch::nn::Module {
  nn::Embedding embed_tokens{nullptr};
  nn::Linear proj{nullptr}, lm_head{nullptr};
  explicit LMImpl(bool tied) {
    embed_tokens = register_module("embed_tokens", nn::Embedding(16, 8));
    proj = register_module("proj", nn::Linear(8, 8));
    lm_head = register_module("lm_head", nn::Linear(torch::nn::LinearOptions(8, 16).bias(false)));
    torch::NoGradGuard no_grad;
    if (tied) lm_head->weight.set_(embed_tokens->weight);
  }
  torch::Tensor forward(const torch::Tensor& x) { return lm_head(torch::relu(proj(embed_tokens(x)))); }
};
TORCH_MODULE(LM);

LM base_model(bool tied) {
  LM model(tied);
  model->eval();
  const peft::StateDict base =
      peft::safetensors::load_file((data_dir() / (tied ? "base_tied.safetensors" : "base_untied.safetensors")).string());
  torch::NoGradGuard no_grad;
  model->embed_tokens->weight.copy_(base["embed_tokens.weight"]);
  model->proj->weight.copy_(base["proj.weight"]);
  model->proj->bias.copy_(base["proj.bias"]);
  if (!tied) model->lm_head->weight.copy_(base["lm_head.weight"]);
  return model;
}

at::Tensor input() { return peft::safetensors::load_file((data_dir() / "input.safetensors").string())["x"]; }
peft::StateDict expected(const std::string& name) {
  return peft::safetensors::load_file((data_dir() / (name + ".safetensors")).string());
}
json json_of(const fs::path& file) { return json::parse(std::ifstream(file)); }

std::set<std::string> keys_of(const peft::StateDict& dict) {
  std::set<std::string> out;
  for (const auto& item : dict) out.insert(item.key());
  return out;
}


struct Case {
  std::string name;
  bool tied;
};

class LoraTokens : public testing::TestWithParam<Case> {};

// The reference LM is a transformers-style model: get_input_embeddings() / get_output_embeddings().
peft::PeftStateDictOptions lm_options() {
  peft::PeftStateDictOptions options;
  options.input_embeddings = "embed_tokens";
  options.output_embeddings = "lm_head";
  return options;
}

// Python's adapter, loaded here: the same outputs, gradients, merged outputs, and the same files when saved again.
TEST_P(LoraTokens, MatchesPython) {
  WarningCapture warnings;
  const Case c = GetParam();
  const fs::path dir = data_dir() / c.name;
  const peft::StateDict want = expected(c.name);
  LM model = base_model(c.tied);
  peft::LoadAdapterOptions options;
  options.is_trainable = true;
  peft::load_adapter(model, dir.string(), "default", options);
  const at::Tensor x = input();

  const at::Tensor out = model->forward(x);
  EXPECT_LT(max_abs_diff(out, want["output"]), 1e-5);
  // Gradients: every tensor Python's file keeps, under its key.
  out.square().sum().backward();
  const peft::StateDict adapter = peft::get_peft_model_state_dict(model, "default", lm_options());
  const peft::StateDict file = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
  std::set<std::string> file_keys;
  for (const auto& item : file) file_keys.insert(item.key().substr(std::string("base_model.model.").size()));
  EXPECT_EQ(keys_of(adapter), file_keys);
  int checked = 0;
  for (const auto& item : want) {
    if (item.key().rfind("grad.", 0) != 0) continue;
    const std::string key = item.key().substr(std::string("grad.base_model.model.").size());
    ASSERT_TRUE(adapter.contains(key)) << key;
    ASSERT_TRUE(adapter[key].grad().defined()) << key;
    EXPECT_LT(max_abs_diff(adapter[key].grad(), item.value()), 1e-5) << key;
    ++checked;
  }
  EXPECT_GE(checked, 2);
  for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
  {
    torch::NoGradGuard no_grad;
    peft::DisabledAdapters off(model);
    EXPECT_LT(max_abs_diff(model->forward(x), want["output_disabled"]), 1e-5);
  }

  // Saved again: Python's keys and values, and the config fields.
  Scratch scratch("lora_tokens_" + c.name);
  peft::save_adapter(model, (scratch / "saved").string(), "default", lm_options());
  const peft::StateDict saved = peft::safetensors::load_file((scratch / "saved" / "adapter_model.safetensors").string());
  EXPECT_EQ(keys_of(saved), keys_of(file));
  for (const auto& item : file) EXPECT_LT(max_abs_diff(saved[item.key()], item.value()), 1e-7) << item.key();
  const json ours = json_of(scratch / "saved" / "adapter_config.json");
  const json python = json_of(dir / "adapter_config.json");
  for (const char* field : {"trainable_token_indices", "ensure_weight_tying", "modules_to_save"}) {
    EXPECT_EQ(ours[field], python[field]) << field;
  }
  // Python writes the set it rewrote target_modules into in its own order.
  EXPECT_EQ(ours["target_modules"].get<std::set<std::string>>(), python["target_modules"].get<std::set<std::string>>());

  torch::NoGradGuard no_grad;
  peft::merge_and_unload(model);
  EXPECT_TRUE(peft::adapter_names(model).empty());
  EXPECT_LT(max_abs_diff(model->forward(x), want["output_merged"]), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Python, LoraTokens,
                         testing::Values(Case{"list_untied", false}, Case{"dict_untied", false}, Case{"list_tied", true},
                                         Case{"dict_tied_same", true}, Case{"dict_tied_different", true},
                                         Case{"list_tied_ensure", true}, Case{"save_tied_ensure", true},
                                         Case{"target_tied_ensure", true}),
                         [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

// A config made here gives the adapter Python's files describe: tensors of the same keys and shapes, the same
// trainable set, and a tied head sharing the embedding's delta.
TEST(LoraTokensInject, FromAConfigLikePython) {
  WarningCapture warnings;
  LM model = base_model(/*tied=*/true);
  const auto config = peft::LoraConfig().r(2).lora_alpha(4).target_modules({"proj"}).trainable_token_indices(
      std::vector<int64_t>{2, 5, 7});
  const at::Tensor before = model->forward(input()).detach();
  peft::inject_adapter_in_model(config, model);
  EXPECT_LT(max_abs_diff(model->forward(input()), before), 1e-6) << "the token delta starts as the rows themselves";
  const auto named = model->named_parameters();
  ASSERT_NE(named.find("embed_tokens.trainable_tokens_delta.default"), nullptr);
  ASSERT_NE(named.find("lm_head.trainable_tokens_delta.default"), nullptr);
  EXPECT_TRUE(named["embed_tokens.trainable_tokens_delta.default"].is_same(named["lm_head.trainable_tokens_delta.default"]));
  const peft::StateDict python = peft::safetensors::load_file((data_dir() / "list_tied" / "adapter_model.safetensors").string());
  const peft::StateDict ours = peft::get_peft_model_state_dict(model);
  std::set<std::string> python_keys;
  for (const auto& item : python) {
    const std::string key = item.key().substr(std::string("base_model.model.").size());
    python_keys.insert(key);
    ASSERT_TRUE(ours.contains(key)) << key;
    EXPECT_EQ(ours[key].sizes(), item.value().sizes()) << key;
  }
  EXPECT_EQ(keys_of(ours), python_keys);
  // Python's trainable set: LoRA factors and the one delta.
  std::set<const void*> trainable;
  for (const at::Tensor& t : peft::trainable_tensors(model)) trainable.insert(t.unsafeGetTensorImpl());
  EXPECT_EQ(trainable.size(), 3u);
  // The state dict loads into it: the outputs are Python's.
  peft::set_peft_model_state_dict(model, python);
  EXPECT_LT(max_abs_diff(model->forward(input()), expected("list_tied")["output"]), 1e-5);
}

TEST(LoraTokensInject, DifferentRowsOnTiedLayersKeepTwoDeltas) {
  WarningCapture warnings;
  LM model = base_model(/*tied=*/true);
  std::map<std::string, std::vector<int64_t>> rows{{"embed_tokens", {2, 5}}, {"lm_head", {3}}};
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"proj"}).trainable_token_indices(rows), model);
  const auto named = model->named_parameters();
  EXPECT_EQ(named["embed_tokens.trainable_tokens_delta.default"].size(0), 2);
  EXPECT_EQ(named["lm_head.trainable_tokens_delta.default"].size(0), 1);
}

TEST(LoraTokensInject, RefusesWhatPythonRefusesAndLeavesTheModel) {
  WarningCapture warnings;
  LM model = base_model(/*tied=*/true);
  const at::Tensor before = model->forward(input()).detach();
  auto expect_untouched = [&] {
    EXPECT_TRUE(peft::adapter_names(model).empty());
    EXPECT_EQ(model->embed_tokens->named_children().size(), 0u);
    EXPECT_EQ(model->proj->named_children().size(), 0u);
    EXPECT_LT(max_abs_diff(model->forward(input()), before), 1e-7);
  };
  std::map<std::string, std::vector<int64_t>> mismatched{{"embed_tokens", {2, 5}}, {"lm_head", {3}}};
  expect_error<peft::ConfigError>(
      [&] {
        peft::inject_adapter_in_model(
            peft::LoraConfig().target_modules({"proj"}).trainable_token_indices(mismatched).ensure_weight_tying(true), model);
      },
      "Cannot ensure weight tying when different token indices are specified for tied layers. Conflicting layers: "
      "embed_tokens: [2, 5], lm_head: [3].");
  expect_untouched();
  expect_error<peft::ConfigError>(
      [&] {
        peft::inject_adapter_in_model(peft::LoraConfig()
                                          .target_modules({"proj"})
                                          .modules_to_save({"embed_tokens"})
                                          .trainable_token_indices(std::map<std::string, std::vector<int64_t>>{{"embed_tokens", {1}}}),
                                      model);
      },
      "either specify `modules_to_save=[..., \"embed_tokens\", ...]` or `trainable_tokens={'embed_tokens': x}` but not both");
  expect_untouched();
  expect_error<peft::ConfigError>(
      [&] {
        peft::inject_adapter_in_model(
            peft::LoraConfig().target_modules({"proj"}).trainable_token_indices(
                std::map<std::string, std::vector<int64_t>>{{"wte", {1}}}),
            model);
      },
      "Target modules {'wte'} not found in the base model");
  expect_untouched();
  expect_error<peft::ConfigError>(
      [&] {
        peft::inject_adapter_in_model(
            peft::LoraConfig().target_modules({"proj"}).trainable_token_indices(std::vector<int64_t>{1, 99}), model);
      },
      "99 is not a row of 'embed_tokens'");
  expect_untouched();
  expect_error<peft::UnsupportedLayerError>(
      [&] {
        peft::inject_adapter_in_model(
            peft::LoraConfig().target_modules({"proj", "embed_tokens"}).trainable_token_indices(std::vector<int64_t>{1}), model);
      },
      "one adapter method per layer");
  expect_untouched();
  expect_error<peft::ConfigError>(
      [&] {
        peft::inject_adapter_in_model(
            peft::LoraConfig().target_modules({"proj"}).trainable_token_indices(std::vector<int64_t>{1, 1}), model);
      },
      "lists 1 more than once");
  expect_untouched();
}

TEST(LoraTokensInject, WarnsWhenTyingIsAskedWithoutTiedWeights) {
  WarningCapture warnings;
  LM model = base_model(/*tied=*/false);
  peft::inject_adapter_in_model(
      peft::LoraConfig().target_modules({"proj"}).trainable_token_indices(std::vector<int64_t>{1}).ensure_weight_tying(true),
      model);
  EXPECT_TRUE(warnings.contains("ensure_weight_tying=True but the model does not have tied weights"));
  EXPECT_EQ(model->named_parameters().find("lm_head.trainable_tokens_delta.default"), nullptr);
}

// ensure_weight_tying with LoRA on the embedding: the tied head's factors are the embedding's (transposed views of
// the same storage), re-initialised through the head as Python does; the saved config names the embedding.
TEST(LoraWeightTying, TiedHeadUsesTheEmbeddingFactors) {
  WarningCapture warnings;
  LM model = base_model(/*tied=*/true);
  const at::Tensor before = model->forward(input()).detach();
  auto config = peft::LoraConfig().r(2).lora_alpha(4).target_modules({"proj", "lm_head"}).ensure_weight_tying(true);
  peft::inject_adapter_in_model(config, model);
  const auto named = model->named_parameters();
  const at::Tensor emb_A = named["embed_tokens.lora_embedding_A.default"], emb_B = named["embed_tokens.lora_embedding_B.default"];
  const at::Tensor head_A = named["lm_head.lora_A.default.weight"], head_B = named["lm_head.lora_B.default.weight"];
  EXPECT_EQ(head_A.data_ptr(), emb_B.data_ptr());
  EXPECT_EQ(head_B.data_ptr(), emb_A.data_ptr());
  EXPECT_TRUE(torch::equal(head_A, emb_B.t()));
  EXPECT_EQ(emb_A.abs().sum().item<double>(), 0.0) << "Python zeroes the head's lora_B, the embedding's A";
  EXPECT_GT(emb_B.abs().sum().item<double>(), 0.0);
  EXPECT_LT(max_abs_diff(model->forward(input()), before), 1e-6);
  const auto saved = peft::adapter_config(model, "default");
  EXPECT_EQ(saved->target_modules().names(), (std::vector<std::string>{"embed_tokens", "proj"}));
  // A training step moves both through the one storage.
  {
    torch::NoGradGuard no_grad;
    emb_A.add_(0.1);
  }
  EXPECT_TRUE(torch::equal(head_B, emb_A.t()));
}

TEST(LoraWeightTying, TiedHeadCopyIsTheEmbeddingCopy) {
  WarningCapture warnings;
  LM model = base_model(/*tied=*/true);
  peft::inject_adapter_in_model(
      peft::LoraConfig().target_modules({"proj"}).modules_to_save({"embed_tokens"}).ensure_weight_tying(true), model);
  const auto named = model->named_parameters();
  const at::Tensor emb_copy = named["embed_tokens.modules_to_save.default.weight"];
  const at::Tensor head_copy = named["lm_head.modules_to_save.default.weight"];
  EXPECT_TRUE(head_copy.is_same(emb_copy));
  EXPECT_NE(emb_copy.data_ptr(), model->embed_tokens->weight.data_ptr()) << "a copy, not the base weight";
}

TEST(LoraWeightTying, WarnsWhenATiedLayerIsAdaptedWithoutIt) {
  WarningCapture warnings;
  LM model = base_model(/*tied=*/true);
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"proj", "lm_head"}), model);
  EXPECT_TRUE(warnings.contains("a tied layer is part of the adapter, but `ensure_weight_tying` is not set to True"));
  EXPECT_EQ(model->named_parameters().find("embed_tokens.lora_embedding_A.default"), nullptr);
}

TEST(LoraTokensOfflineMerge, RefusedWithTheWayToMerge) {
  for (const std::string name : {"list_untied", "target_tied_ensure"}) {
    const fs::path dir = data_dir() / name;
    const auto config = peft::load_config((dir / "adapter_config.json").string());
    const peft::StateDict adapter = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
    const peft::StateDict base = peft::safetensors::load_file((data_dir() / "base_untied.safetensors").string());
    expect_error<peft::MergeError>([&] { peft::merge_into_weights(*config, adapter, base); },
                                   "merge it on the model (load_adapter, then merge_and_unload)");
  }
}

TEST(LoraTokensInject, WeightedCombinationRefused) {
  WarningCapture warnings;
  LM model = base_model(/*tied=*/false);
  const auto config = peft::LoraConfig().target_modules({"proj"}).trainable_token_indices(std::vector<int64_t>{1});
  peft::inject_adapter_in_model(config, model, "a");
  peft::inject_adapter_in_model(config, model, "b");
  expect_error<peft::ConfigError>([&] { peft::add_weighted_adapter(model, {"a", "b"}, {0.5, 0.5}, "ab"); },
                                  "trainable tokens");
  EXPECT_EQ(peft::adapter_names(model), (std::vector<std::string>{"a", "b"}));
}

TEST(LoraTokensConfig, JsonRoundTrip) {
  for (const std::string text : {R"({"peft_type": "LORA", "target_modules": ["proj"], "trainable_token_indices": [3, 1]})",
                                 R"({"peft_type": "LORA", "target_modules": ["proj"], "trainable_token_indices": {"lm_head": [2], "embed_tokens": [0, 4]}, "ensure_weight_tying": true})"}) {
    const auto config = peft::config_from_json_string(text);
    const json in = json::parse(text);
    const json out = json::parse(config->to_json_string());
    EXPECT_EQ(out["trainable_token_indices"], in["trainable_token_indices"]);
    EXPECT_EQ(out["ensure_weight_tying"], in.value("ensure_weight_tying", false));
  }
  expect_error<peft::ConfigError>(
      [] { peft::config_from_json_string(R"({"peft_type": "LORA", "trainable_token_indices": "embed_tokens"})"); },
      "trainable_token_indices");
  expect_error<peft::ConfigError>(
      [] { peft::config_from_json_string(R"({"peft_type": "ADALORA", "total_step": 10, "trainable_token_indices": [1]})"); },
      "trainable_token_indices");
}

}  // namespace
}  // namespace peft_test::lora_tokens_test
