// BD-LoRA (LoraConfig::use_bdlora) against Python PEFT (tests/data/methods/bdlora/, made by its make_reference.py):
// Python's saved adapters loaded and run (active, disabled, merged, unmerged, merge_and_unload), gradients, the
// same adapters injected from the C++ config (initialisation from a seed, keys, shapes, adapter_config.json),
// save/load round trip, low_cpu_mem_usage, offline merge, per-sample adapters, and the configs Python refuses.

#include <fstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <peft/peft.h>

#include "support/errors.h"
#include "support/small_mlp.h"
#include "support/vectors.h"
#include "support/scratch.h"

namespace peft_test::bdlora_test {
namespace {

namespace fs = std::filesystem;

fs::path data_dir() { return cases_dir().parent_path() / "methods" / "bdlora"; }
SmallMlp base_model() { return load_small_mlp(data_dir() / "base.safetensors"); }
at::Tensor input() { return peft::safetensors::load_file((data_dir() / "input.safetensors").string())["x"]; }
peft::StateDict reference(const std::string& name) {
  return peft::safetensors::load_file((data_dir() / name / "reference.safetensors").string());
}
nlohmann::json json_of(const fs::path& file) { return nlohmann::json::parse(std::ifstream(file)); }

const char* const kPrefix = "base_model.model.";

// The configs make_reference.py gives Python.
peft::LoraConfig case_config(const std::string& name) {
  auto config = peft::LoraConfig().r(4).lora_alpha(8).target_modules({"lin0", "lin1", "lin2"});
  if (name == "bd_a") return config.use_bdlora(peft::BdLoraConfig().target_modules_bd_a({"lin0", "lin1", "lin2"}).nblocks(2));
  if (name == "bd_b") return config.use_bdlora(peft::BdLoraConfig().target_modules_bd_b({"lin"}).nblocks(4)).use_rslora(true);
  if (name == "both") {
    return config
        .use_bdlora(peft::BdLoraConfig().target_modules_bd_a({"lin0", "lin1"}).target_modules_bd_b({"2"}).nblocks(2))
        .rank_pattern({{"lin1", 6}})
        .alpha_pattern({{"lin2", 4}});
  }
  return config.use_bdlora(peft::BdLoraConfig().target_modules_bd_a({"lin0"}).nblocks(2).match_strict(false)).lora_bias(true);
}


class BdLora : public testing::TestWithParam<std::string> {};

TEST_P(BdLora, PythonAdapterGivesPythonsOutputs) {
  const peft::StateDict expected = reference(GetParam());
  SmallMlp model = base_model();
  peft::load_adapter(model, (data_dir() / GetParam() / "adapter").string());
  torch::NoGradGuard no_grad;
  const at::Tensor x = input();
  EXPECT_LT(max_abs_diff(model->forward(x), expected["active"]), 1e-5);
  {
    peft::DisabledAdapters disabled(model);
    EXPECT_LT(max_abs_diff(model->forward(x), expected["disabled"]), 1e-5);
  }
  peft::merge_adapter(model);
  EXPECT_LT(max_abs_diff(model->forward(x), expected["merged"]), 1e-5);
  for (const char* lin : {"lin0", "lin1", "lin2"}) {
    const std::string name = std::string(lin) + ".weight";
    EXPECT_LT(max_abs_diff(model->named_parameters()[name], expected["merged." + name]), 1e-5) << name;
  }
  peft::unmerge_adapter(model);
  EXPECT_LT(max_abs_diff(model->forward(x), expected["unmerged"]), 1e-5);
  peft::merge_adapter(model, {}, /*safe_merge=*/true);
  EXPECT_LT(max_abs_diff(model->forward(x), expected["merged"]), 1e-5) << "safe merge";
  peft::unmerge_adapter(model);
  peft::merge_and_unload(model);
  EXPECT_TRUE(peft::adapter_names(model).empty());
  EXPECT_LT(max_abs_diff(model->forward(x), expected["merged"]), 1e-5) << "merge_and_unload";
}

TEST_P(BdLora, GradientsMatchPython) {
  const peft::StateDict expected = reference(GetParam());
  SmallMlp model = base_model();
  peft::LoadAdapterOptions options;
  options.is_trainable = true;
  peft::load_adapter(model, (data_dir() / GetParam() / "adapter").string(), "default", options);
  model->train();
  model->forward(input()).pow(2).sum().backward();
  const auto params = model->named_parameters();
  size_t compared = 0;
  for (const auto& item : expected) {
    if (item.key().rfind("grad.", 0) != 0) continue;
    // grad.base_model.model.lin0.lora_A.weight -> lin0.lora_A.default.weight
    std::string key = item.key().substr(std::string("grad.").size() + std::string(kPrefix).size());
    const size_t dot = key.rfind('.');
    key = key.substr(0, dot) + ".default" + key.substr(dot);
    ASSERT_TRUE(params.contains(key)) << key;
    ASSERT_TRUE(params[key].grad().defined()) << key;
    EXPECT_LT(max_abs_diff(params[key].grad(), item.value()), 1e-5) << key;
    ++compared;
  }
  EXPECT_EQ(compared, peft::get_peft_model_state_dict(model).size());
}

TEST_P(BdLora, InjectedFromTheConfigAsPythonIs) {
  const peft::StateDict expected = reference(GetParam());
  const fs::path python_dir = data_dir() / GetParam() / "adapter";
  SmallMlp model = base_model();
  torch::manual_seed(7);
  peft::inject_adapter_in_model(case_config(GetParam()), model);
  // The seed's initialisation: plain factors, then the block-diagonal one drawn as Python's BlockDiagonalLinear.
  const peft::StateDict adapter = peft::get_peft_model_state_dict(model);
  size_t compared = 0;
  for (const auto& item : expected) {
    if (item.key().rfind("init.", 0) != 0) continue;
    const std::string name = item.key().substr(std::string("init.").size() + std::string(kPrefix).size());
    ASSERT_TRUE(adapter.contains(name)) << name;
    EXPECT_EQ(adapter[name].sizes(), item.value().sizes()) << name;
    EXPECT_LT(max_abs_diff(adapter[name], item.value()), 1e-5) << name;
    ++compared;
  }
  EXPECT_EQ(compared, adapter.size());

  // Saved like Python's save_pretrained: same keys and shapes, same adapter_config.json fields.
  Scratch scratch("bdlora_" + std::string(GetParam()));
  peft::save_adapter(model, scratch / "saved");
  const peft::StateDict ours = peft::safetensors::load_file(scratch / "saved/adapter_model.safetensors");
  const peft::StateDict python = peft::safetensors::load_file((python_dir / "adapter_model.safetensors").string());
  ASSERT_EQ(ours.keys(), python.keys());
  for (const auto& item : python) EXPECT_EQ(ours[item.key()].sizes(), item.value().sizes()) << item.key();
  const nlohmann::json a = json_of(scratch / "saved/adapter_config.json"), b = json_of(python_dir / "adapter_config.json");
  EXPECT_EQ(a["use_bdlora"], b["use_bdlora"]);
  for (const char* key : {"r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "lora_bias", "use_dora",
                          "init_lora_weights", "arrow_config", "alora_invocation_tokens"}) {
    EXPECT_EQ(a[key], b[key]) << key;
  }

  // Python's trained weights loaded into the injected adapter give Python's outputs; the saved copy reloads.
  peft::set_peft_model_state_dict(model, python);
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(model->forward(input()), expected["active"]), 1e-5);
  peft::save_adapter(model, scratch / "trained");
  SmallMlp reloaded = base_model();
  peft::load_adapter(reloaded, scratch / "trained");
  EXPECT_LT(max_abs_diff(reloaded->forward(input()), expected["active"]), 1e-5);
  // The same config, but for inference_mode (a loaded adapter is frozen unless loaded for training).
  nlohmann::json reloaded_config = nlohmann::json::parse(peft::adapter_config(reloaded, "default")->to_json_string());
  nlohmann::json injected_config = nlohmann::json::parse(peft::adapter_config(model, "default")->to_json_string());
  EXPECT_TRUE(reloaded_config["inference_mode"].get<bool>());
  reloaded_config.erase("inference_mode");
  injected_config.erase("inference_mode");
  EXPECT_EQ(reloaded_config, injected_config);
}

// low_cpu_mem_usage: the block-diagonal factors are created on the meta device in their stored shapes, then adopted.
TEST_P(BdLora, LoadsWithLowCpuMemUsage) {
  SmallMlp model = base_model();
  peft::LoadAdapterOptions options;
  options.low_cpu_mem_usage = true;
  peft::load_adapter(model, (data_dir() / GetParam() / "adapter").string(), "default", options);
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(model->forward(input()), reference(GetParam())["active"]), 1e-5);
}

// Offline merge (no model): the weights file merged with Python's adapter gives Python's merged weights.
TEST_P(BdLora, MergesIntoAWeightsFile) {
  const fs::path dir = data_dir() / GetParam() / "adapter";
  const peft::OfflineMergeResult merged =
      peft::merge_into_weights(*peft::load_config((dir / "adapter_config.json").string()),
                               peft::safetensors::load_file((dir / "adapter_model.safetensors").string()),
                               peft::safetensors::load_file((data_dir() / "base.safetensors").string()));
  const peft::StateDict expected = reference(GetParam());
  for (const char* lin : {"lin0", "lin1", "lin2"}) {
    const std::string name = std::string(lin) + ".weight";
    ASSERT_TRUE(merged.tensors.contains(name)) << name;
    EXPECT_LT(max_abs_diff(merged.tensors[name], expected["merged." + name]), 1e-5) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Python, BdLora, testing::Values("bd_a", "bd_b", "both", "mixed"));

// Python's _mixed_batch_forward calls the BD-LoRA modules: each row gets its own adapter.
TEST(BdLoraPerSample, RowsUseTheirAdapter) {
  SmallMlp model = base_model();
  peft::load_adapter(model, (data_dir() / "both" / "adapter").string(), "both");
  peft::load_adapter(model, (data_dir() / "bd_b" / "adapter").string(), "bd_b");
  torch::NoGradGuard no_grad;
  const at::Tensor x = input();
  at::Tensor mixed;
  {
    peft::AdapterNamesPerSample per_sample(model, {"bd_b", "__base__", "both"});
    mixed = model->forward(x);
  }
  EXPECT_LT(max_abs_diff(mixed[0], reference("bd_b")["active"][0]), 1e-5);
  EXPECT_LT(max_abs_diff(mixed[1], reference("both")["disabled"][1]), 1e-5);
  EXPECT_LT(max_abs_diff(mixed[2], reference("both")["active"][2]), 1e-5);
}

// Hot-swapping Python's weights into an adapter of the same BD-LoRA config; other configs, rank padding and weighted
// combinations are refused.
TEST(BdLoraHotswap, SwapsIntoTheSameLayout) {
  SmallMlp model = base_model();
  peft::inject_adapter_in_model(case_config("bd_a"), model);
  peft::hotswap_adapter(model, (data_dir() / "bd_a" / "adapter").string(), "default");
  {
    torch::NoGradGuard no_grad;
    EXPECT_LT(max_abs_diff(model->forward(input()), reference("bd_a")["active"]), 1e-5);
  }
  expect_error<peft::ConfigError>(
      [&] { peft::hotswap_adapter(model, (data_dir() / "mixed" / "adapter").string(), "default"); },
      "Configs are incompatible: for use_bdlora");
  expect_error<peft::ConfigError>([&] { peft::prepare_for_hotswap(model, 8); }, "BD-LoRA adapter 'default'");
  expect_error<peft::ConfigError>([&] { peft::add_weighted_adapter(model, {"default"}, {1.0}, "combined"); },
                                  "does not combine BD-LoRA adapters");
  EXPECT_EQ(peft::adapter_names(model), std::vector<std::string>{"default"});
}

// Each refusal leaves the model as it was: no adapter, the same parameters.
void expect_refused(const peft::LoraConfig& config, const std::string& text, SmallMlp model = base_model()) {
  const size_t before = model->named_parameters().size();
  expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(config, model); }, text);
  EXPECT_TRUE(peft::adapter_names(model).empty()) << text;
  EXPECT_EQ(model->named_parameters().size(), before) << text;
}

TEST(BdLoraErrors, RefusedAsPythonRefuses) {
  const auto lora = [] { return peft::LoraConfig().r(4).target_modules({"lin0", "lin1", "lin2"}); };
  const auto bd = [] { return peft::BdLoraConfig().target_modules_bd_a({"lin"}).nblocks(2); };
  // lin0 has 10 input features.
  expect_refused(lora().use_bdlora(bd().nblocks(4)), "self.in_features=10 or self.out_features=4 not divisible by 4");
  // r = 3 on lin2, block-diagonal lora_B.
  expect_refused(lora().rank_pattern({{"lin2", 3}}).use_bdlora(bd().target_modules_bd_a({"lin0", "lin1"}).target_modules_bd_b({"lin2"})),
                 "self.in_features=3 or self.out_features=4 not divisible by 2");
  expect_refused(lora().use_bdlora(bd().target_modules_bd_a({"lin0"})),
                 "Target lin1 matches neither A nor B block-diagonal patterns.If this is intentional, set "
                 "match_strict=False in BdLoraConfig during initialization.");
  expect_refused(lora().use_bdlora(bd().target_modules_bd_b({"1"})), "Target lin1 matches both A and B block-diagonal patterns");
  expect_refused(lora().use_bdlora(bd().target_modules_bd_b({"lin", "x"})),
                 "Found overlapping modules in target_modules_bd lists:['lin'] (A) and ['lin', 'x'] (B).");
  expect_refused(lora().use_bdlora(bd().nblocks(0)), "use_bdlora.nblocks must be a positive integer, got 0");
  expect_refused(lora().use_bdlora(bd()).use_dora(true), "Invalid or unsupported variant combination: ('use_bdlora', 'use_dora')");
  expect_refused(lora().use_bdlora(bd()).init_lora_weights("mica"),
                 "Invalid or unsupported variant combination: ('mica', 'use_bdlora')");
  expect_refused(lora().use_bdlora(bd()).alora_invocation_tokens(std::vector<int64_t>{5}).use_dora(true),
                 "Invalid or unsupported variant combination: ('alora_invocation_tokens', 'use_bdlora', 'use_dora')");
  expect_refused(lora().lora_bias(true).use_bdlora(peft::BdLoraConfig().target_modules_bd_b({"lin"}).nblocks(2)),
                 "lora_bias=True is not supported with a block-diagonal lora_B ('lin0')");

  // Layers other than Linear: Python's lora.Embedding has no BD-LoRA variant.
  struct WithEmbedding : torch::nn::Module {
    torch::nn::Embedding emb{10, 4};
    WithEmbedding() { register_module("emb", emb); }
  };
  auto embedding_model = std::make_shared<WithEmbedding>();
  expect_error<peft::ConfigError>(
      [&] {
        peft::inject_adapter_in_model(peft::LoraConfig().r(2).target_modules({"emb"}).use_bdlora(
                                          peft::BdLoraConfig().target_modules_bd_a({"emb"}).nblocks(2)),
                                      *embedding_model);
      },
      "BD-LoRA adapts Linear layers only, 'emb' is a");
  EXPECT_TRUE(peft::adapter_names(*embedding_model).empty());

  // adapter_config.json: use_bdlora is Python's asdict(BdLoraConfig); other keys are refused.
  nlohmann::json config = json_of(data_dir() / "both" / "adapter" / "adapter_config.json");
  const auto parsed = std::dynamic_pointer_cast<const peft::LoraConfig>(peft::config_from_json_string(config.dump()));
  ASSERT_TRUE(parsed && parsed->use_bdlora());
  EXPECT_EQ(*parsed->use_bdlora()->target_modules_bd_a(), (std::vector<std::string>{"lin0", "lin1"}));
  EXPECT_EQ(*parsed->use_bdlora()->target_modules_bd_b(), (std::vector<std::string>{"2"}));
  EXPECT_EQ(parsed->use_bdlora()->nblocks(), 2);
  EXPECT_TRUE(parsed->use_bdlora()->match_strict());
  config["use_bdlora"]["nblocks_typo"] = 2;
  expect_error<peft::ConfigError>([&] { peft::config_from_json_string(config.dump()); }, "nblocks_typo");
  config["use_bdlora"] = "lin0";
  expect_error<peft::ConfigError>([&] { peft::config_from_json_string(config.dump()); }, "use_bdlora");
  // AdaLoRA's layers have no LoRA variants.
  expect_error<peft::ConfigError>(
      [&] {
        peft::config_from_json_string(
            R"({"peft_type": "ADALORA", "total_step": 10, "use_bdlora": {"nblocks": 2, "target_modules_bd_a": ["q"]}})");
      },
      "BD-LoRA");
}

}  // namespace
}  // namespace peft_test::bdlora_test
