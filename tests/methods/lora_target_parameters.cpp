// LoRA on parameters (LoraConfig::target_parameters, Python's lora.ParamWrapper) against Python PEFT
// (tests/data/methods/lora_target_parameters/, made by its make_reference.py): Python's adapters loaded and run
// (active, disabled, merge_and_unload), nested wrappers of two 3-D expert tensors of one module, a 2-D parameter of a
// custom module beside a module target, a Linear's weight, two adapters; saved files equal to Python's; injection
// from a config (base model state untouched, merge/unmerge, frozen tensors); the configs Python refuses, each
// leaving the model as it was.

#include <fstream>
#include <set>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <peft/peft.h>

#include "support/errors.h"
#include "support/layers.h"
#include "support/scratch.h"
#include "support/vectors.h"

namespace peft_test::lora_target_parameters_test {
namespace {

namespace fs = std::filesystem;

// The model of make_reference.py. Gate and Experts read their parameters directly, as MoE blocks do.
struct GateImpl : torch::nn::Module {
  at::Tensor weight;
  GateImpl() { weight = register_parameter("weight", torch::zeros({8, 8})); }
  at::Tensor forward(const at::Tensor& x) { return at::matmul(x, weight.t()); }
};
TORCH_MODULE(Gate);

struct ExpertsImpl : torch::nn::Module {
  at::Tensor gate_up_proj, down_proj;
  ExpertsImpl() {
    gate_up_proj = register_parameter("gate_up_proj", torch::zeros({3, 8, 12}));
    down_proj = register_parameter("down_proj", torch::zeros({3, 6, 8}));
  }
  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor u = at::einsum("bh,ehk->ebk", {x, gate_up_proj});
    const auto parts = u.chunk(2, -1);
    return at::einsum("ebi,eih->bh", {torch::silu(parts[0]) * parts[1], down_proj});
  }
};
TORCH_MODULE(Experts);

struct NetImpl : torch::nn::Module {
  nn::Linear lin0{8, 8};
  Gate gate;
  Experts experts;
  nn::Linear lin1{8, 3};
  NetImpl() {
    register_module("lin0", lin0);
    register_module("gate", gate);
    register_module("experts", experts);
    register_module("lin1", lin1);
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = gate(torch::relu(lin0(x)));
    h = h + experts(h);
    return lin1(h);
  }
};
TORCH_MODULE(Net);

fs::path data_dir() { return cases_dir().parent_path() / "methods" / "lora_target_parameters"; }
Net base_model() {
  // Written in place: Gate and Experts compute with their member tensors, which must stay the registered ones.
  Net model;
  auto params = model->named_parameters();
  torch::NoGradGuard no_grad;
  for (const auto& item : peft::safetensors::load_file((data_dir() / "base.safetensors").string())) {
    params[item.key()].copy_(item.value());
  }
  model->eval();
  return model;
}
at::Tensor input() { return peft::safetensors::load_file((data_dir() / "input.safetensors").string())["x"]; }
peft::StateDict reference(const std::string& name) {
  return peft::safetensors::load_file((data_dir() / name / "reference.safetensors").string());
}
nlohmann::json json_of(const fs::path& file) { return nlohmann::json::parse(std::ifstream(file)); }

const std::string kPrefix = "base_model.model.";

std::vector<std::string> targets_of(const std::string& name) {
  if (name == "mixed") return {"gate.weight", "experts.down_proj"};
  if (name == "linear_weight") return {"lin1.weight"};
  return {"experts.gate_up_proj", "experts.down_proj"};
}

// The model's parameter names and values, to show a refused injection changed nothing.
std::map<std::string, at::Tensor> snapshot(Net& model) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : model->named_parameters()) out[item.key()] = item.value().clone();
  return out;
}
void expect_unchanged(Net& model, const std::map<std::string, at::Tensor>& before) {
  const auto after = snapshot(model);
  ASSERT_EQ(after.size(), before.size());
  for (const auto& [key, value] : before) {
    ASSERT_TRUE(after.count(key)) << key;
    EXPECT_TRUE(after.at(key).equal(value)) << key;
  }
  EXPECT_TRUE(peft::adapter_names(model).empty());
}

class LoraTargetParameters : public testing::TestWithParam<std::string> {};

TEST_P(LoraTargetParameters, PythonAdapterGivesPythonsOutputs) {
  const peft::StateDict expected = reference(GetParam());
  Net model = base_model();
  peft::load_adapter(model, (data_dir() / GetParam() / "adapter").string());
  torch::NoGradGuard no_grad;
  const at::Tensor x = input();
  EXPECT_LT(max_abs_diff(model->forward(x), expected["active"]), 1e-5);
  {
    peft::DisabledAdapters disabled(model);
    EXPECT_LT(max_abs_diff(model->forward(x), expected["disabled"]), 1e-5);
  }
  EXPECT_LT(max_abs_diff(model->forward(x), expected["active"]), 1e-5) << "enabled again";
  peft::merge_adapter(model);
  EXPECT_LT(max_abs_diff(model->forward(x), expected["active"]), 1e-5) << "merged";
  peft::unmerge_adapter(model);
  EXPECT_LT(max_abs_diff(model->forward(x), expected["active"]), 1e-5) << "unmerged";
  peft::merge_and_unload(model);
  EXPECT_TRUE(peft::adapter_names(model).empty());
  EXPECT_LT(max_abs_diff(model->forward(x), expected["merged"]), 1e-5) << "merge_and_unload";
  const auto params = model->named_parameters();
  for (const std::string& key : targets_of(GetParam())) {
    EXPECT_LT(max_abs_diff(params[key], expected["merged." + key]), 1e-5) << key;
  }
  // Unloaded: the model's own modules and parameters only.
  std::set<std::string> names;
  for (const auto& item : params) names.insert(item.key());
  std::set<std::string> base_names;
  for (const auto& item : base_model()->named_parameters()) base_names.insert(item.key());
  EXPECT_EQ(names, base_names);
}

TEST_P(LoraTargetParameters, AdapterTensorsHavePythonsNames) {
  Net model = base_model();
  peft::load_adapter(model, (data_dir() / GetParam() / "adapter").string());
  std::set<std::string> python, ours;
  for (const std::string& key : json_of(data_dir() / GetParam() / "keys.json")) {
    if (key.find("lora_") != std::string::npos) python.insert(key.substr(kPrefix.size()));
  }
  for (const auto& item : model->named_parameters()) {
    if (item.key().find("lora_") != std::string::npos) ours.insert(item.key());
  }
  EXPECT_EQ(ours, python);
}

TEST_P(LoraTargetParameters, SavedFilesArePythons) {
  Scratch scratch("lora_target_parameters_save");
  const fs::path python_dir = data_dir() / GetParam() / "adapter";
  Net model = base_model();
  peft::load_adapter(model, python_dir.string());
  peft::save_adapter(model, scratch.path().string());
  const peft::StateDict python = peft::safetensors::load_file((python_dir / "adapter_model.safetensors").string());
  const peft::StateDict ours = peft::safetensors::load_file((scratch / "adapter_model.safetensors").string());
  ASSERT_EQ(ours.size(), python.size());
  for (const auto& item : python) {
    ASSERT_TRUE(ours.contains(item.key())) << item.key();
    EXPECT_TRUE(ours[item.key()].equal(item.value())) << item.key();
  }
  nlohmann::json config = json_of(scratch / "adapter_config.json");
  const nlohmann::json python_config = json_of(python_dir / "adapter_config.json");
  EXPECT_EQ(config["target_parameters"], python_config["target_parameters"]);
  EXPECT_EQ(config["target_modules"], python_config["target_modules"]);
  EXPECT_EQ(config["rank_pattern"], python_config["rank_pattern"]);
  // And it loads back to the same outputs.
  Net again = base_model();
  peft::load_adapter(again, scratch.path().string());
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(again->forward(input()), reference(GetParam())["active"]), 1e-5);
}

TEST_P(LoraTargetParameters, LowCpuMemUsageLoadGivesTheSameOutputs) {
  Net model = base_model();
  peft::LoadAdapterOptions options;
  options.low_cpu_mem_usage = true;
  peft::load_adapter(model, (data_dir() / GetParam() / "adapter").string(), "default", options);
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(model->forward(input()), reference(GetParam())["active"]), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Cases, LoraTargetParameters, testing::Values("nested", "mixed", "linear_weight"));

TEST(LoraTargetParametersModel, TwoAdaptersSwitchAsInPython) {
  const peft::StateDict expected = reference("two_adapters");
  const fs::path dir = data_dir() / "two_adapters" / "adapter";
  Net model = base_model();
  peft::load_adapter(model, dir.string());
  peft::load_adapter(model, (dir / "other").string(), "other");
  torch::NoGradGuard no_grad;
  const at::Tensor x = input();
  peft::set_adapter(model, "other");
  EXPECT_LT(max_abs_diff(model->forward(x), expected["other"]), 1e-5);
  peft::set_adapter(model, "default");
  EXPECT_LT(max_abs_diff(model->forward(x), expected["active"]), 1e-5);
  // Both active: both deltas in the parameters.
  peft::set_adapter(model, {"default", "other"});
  const at::Tensor both = model->forward(x);
  EXPECT_GT(max_abs_diff(both, expected["active"]), 1e-4);
  EXPECT_GT(max_abs_diff(both, expected["other"]), 1e-4);
  peft::set_adapter(model, "default");
  peft::delete_adapter(model, "other");
  EXPECT_LT(max_abs_diff(model->forward(x), expected["active"]), 1e-5) << "after deleting 'other'";
  peft::unload(model);
  EXPECT_LT(max_abs_diff(model->forward(x), expected["disabled"]), 1e-5) << "unload leaves the base model";
}

TEST(LoraTargetParametersModel, ConfigInjectionKeepsTheBaseModelAndFreezesTheAdapter) {
  Net model = base_model();
  const auto base = snapshot(model);
  const at::Tensor x = input();
  at::Tensor plain;
  {
    torch::NoGradGuard no_grad;
    plain = model->forward(x);
  }
  auto config = peft::LoraConfig().r(2).lora_alpha(4).target_modules(peft::TargetModules(std::vector<std::string>{}))
                    .target_parameters(std::vector<std::string>{"gate_up_proj", "down_proj"})
                    .init_lora_weights(false);
  peft::inject_adapter_in_model(config, model);
  torch::NoGradGuard no_grad;
  const at::Tensor adapted = model->forward(x);
  EXPECT_GT(max_abs_diff(adapted, plain), 1e-4) << "lora_B is not zero with init_lora_weights=false";
  // The base model's state is W, not W + delta.
  const peft::StateDict base_state = peft::get_base_model_state_dict(model);
  for (const auto& [key, value] : base) EXPECT_LT(max_abs_diff(base_state[key], value), 1e-6) << key;
  // Nothing of it trains here (the delta lives in the parameter).
  EXPECT_TRUE(peft::trainable_tensors(model).empty());
  // Writing the base state again keeps the adapter applied.
  peft::set_base_model_state_dict(model, base_state);
  EXPECT_LT(max_abs_diff(model->forward(x), adapted), 1e-5);
  peft::merge_adapter(model, {}, /*safe_merge=*/true);
  EXPECT_LT(max_abs_diff(model->forward(x), adapted), 1e-5) << "merged";
  peft::unmerge_adapter(model);
  {
    peft::DisabledAdapters disabled(model);
    EXPECT_LT(max_abs_diff(model->forward(x), plain), 1e-5) << "disabled";
  }
  peft::delete_adapter(model, "default");
  EXPECT_LT(max_abs_diff(model->forward(x), plain), 1e-5) << "deleted";
  // Back to the base model: its parameters only, their values up to the rounding of W + delta - delta.
  const auto after = snapshot(model);
  ASSERT_EQ(after.size(), base.size());
  for (const auto& [key, value] : base) EXPECT_LT(max_abs_diff(after.at(key), value), 1e-6) << key;
}

TEST(LoraTargetParametersModel, DefaultInitAddsNothing) {
  Net model = base_model();
  torch::NoGradGuard no_grad;
  const at::Tensor plain = model->forward(input());
  peft::inject_adapter_in_model(
      peft::LoraConfig().target_parameters(std::vector<std::string>{"experts.down_proj", "gate.weight"}), model);
  EXPECT_LT(max_abs_diff(model->forward(input()), plain), 1e-7);
  EXPECT_EQ(peft::get_peft_model_state_dict(model).size(), 4u);
}

TEST(LoraTargetParametersModel, RefusalsLeaveTheModelAsItWas) {
  Net model = base_model();
  const auto before = snapshot(model);
  auto base = [] {
    return peft::LoraConfig().r(2).target_modules(peft::TargetModules(std::vector<std::string>{})).target_parameters(
        std::vector<std::string>{"experts.down_proj"});
  };
  expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(base().lora_dropout(0.1), model); },
                                  "lora.ParamWrapper does not work with lora_dropout != 0.");
  expect_unchanged(model, before);
  expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(base().use_dora(true), model); },
                                  "lora.ParamWrapper does not work with use_dora=True.");
  expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(base().init_lora_weights("pissa"), model); },
                                  "is not supported with `target_parameters`");
  expect_error<peft::ConfigError>(
      [&] {
        peft::inject_adapter_in_model(
            base().target_modules({"lin1"}).target_parameters(std::vector<std::string>{"lin1.weight"}), model);
      },
      "Make sure that this layer is not also targeted with `target_modules`");
  expect_unchanged(model, before);
  expect_error<peft::ConfigError>(
      [&] { peft::inject_adapter_in_model(base().target_parameters(std::vector<std::string>{"lin0.bias"}), model); },
      "1 dimensional Parameter, but only 2d and 3d are supported");
  expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(
                                      base().target_parameters(std::vector<std::string>{"lin1.weight"}).modules_to_save({"lin1"}),
                                      model);
                                  },
                                  "is also listed in `modules_to_save`");
  expect_error<peft::NoMatchingPeftModuleError>(
      [&] { peft::inject_adapter_in_model(base().target_parameters(std::vector<std::string>{"nope"}), model); },
      "No `target_modules` passed but also no `target_parameters` found.");
  expect_error<peft::ConfigError>(
      [&] { peft::inject_adapter_in_model(base(), model, "default", false, peft::StateDict()); },
      "please inject the adapter without the state_dict");
  expect_unchanged(model, before);

  // A second adapter must target the same parameters.
  peft::inject_adapter_in_model(base(), model);
  expect_error<peft::ConfigError>(
      [&] {
        peft::inject_adapter_in_model(base().target_parameters(std::vector<std::string>{"experts.gate_up_proj"}), model,
                                      "other");
      },
      "all adapters must target the same set of parameters");
  EXPECT_EQ(peft::adapter_names(model), std::vector<std::string>{"default"});
}

TEST(LoraTargetParametersModel, OfflineMergeAndWeightedAdaptersRefuse) {
  const fs::path dir = data_dir() / "nested" / "adapter";
  const auto config = peft::load_config((dir / "adapter_config.json").string());
  const peft::StateDict adapter = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
  const peft::StateDict base = peft::safetensors::load_file((data_dir() / "base.safetensors").string());
  expect_error<peft::MergeError>([&] { peft::merge_into_weights(*config, adapter, base); },
                                 "merge it on the model");
  Net model = base_model();
  peft::load_adapter(model, dir.string());
  expect_error<peft::ConfigError>(
      [&] { peft::add_weighted_adapter(model, {"default"}, {1.0}, "combined"); }, "target_parameters");
}

}  // namespace
}  // namespace peft_test::lora_target_parameters_test
