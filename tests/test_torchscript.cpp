// Adapters on TorchScript models (<peft/torchscript.h>) against Python PEFT: real torch.jit.trace / torch.jit.script
// exports and Python PEFT's outputs for adapters on them (tests/data/torchscript/, made by its make_exports.py).

#include <torch/torch.h>

#include <torch/csrc/jit/serialization/import.h>

#include <filesystem>

#include <peft/peft.h>
#include <peft/torchscript.h>

#include "support/errors.h"
#include "support/vectors.h"

namespace peft_test::torchscript_test {
namespace {

namespace fs = std::filesystem;

fs::path data_dir() { return cases_dir().parent_path() / "torchscript"; }

at::Tensor tensor_in(const fs::path& file, const std::string& key) {
  return peft::safetensors::load_file(file.string())[key];
}

at::Tensor run(torch::jit::Module& model, const at::Tensor& x) {
  torch::NoGradGuard no_grad;
  return model.forward({x}).toTensor();
}

void expect_close(const at::Tensor& actual, const at::Tensor& expected, const std::string& what, double atol = 1e-5) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  EXPECT_TRUE(torch::allclose(actual, expected, 0, atol))
      << what << ": max abs diff " << (actual - expected).abs().max().item<double>();
}

bool has_peft_attributes(const torch::jit::Module& model) {
  for (const auto& item : model.named_modules()) {
    if (item.value.hasattr("_peft_slot") || item.value.hasattr("_peft_adapters")) return true;
  }
  return false;
}

struct Case {
  std::string model, adapter, file;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.model << "/" << c.adapter << " on " << c.file; }

std::string case_name(const testing::TestParamInfo<Case>& info) {
  return info.param.model + "_" + info.param.adapter + "_" + fs::path(info.param.file).stem().string();
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const std::vector<std::pair<std::string, std::vector<std::string>>> adapters = {
      {"mlp", {"lora_mlp_basic", "lora_mlp_rslora", "lora_mlp_dora", "ia3_mlp"}},
      {"gpt2_small", {"lora", "lora_rslora", "lora_dora", "lora_two_adapters", "ia3"}},
      {"cnn", {"lora", "lora_dora"}},
  };
  for (const auto& [model, names] : adapters) {
    for (const auto& name : names) {
      for (const char* file : {"traced.pt", "scripted.pt"}) cases.push_back({model, name, file});
    }
  }
  return cases;
}

class TorchScriptParity : public testing::TestWithParam<Case> {
 protected:
  fs::path model_dir() const { return data_dir() / GetParam().model; }
  fs::path case_dir() const { return model_dir() / GetParam().adapter; }
  torch::jit::Module load_model() const {
    torch::jit::Module model = torch::jit::load((model_dir() / GetParam().file).string());
    model.eval();
    return model;
  }
  at::Tensor input() const { return tensor_in(model_dir() / "input.safetensors", "x"); }
  at::Tensor expected(const std::string& name) const { return tensor_in(case_dir() / (name + ".safetensors"), "output"); }
};

TEST_P(TorchScriptParity, AdapterOutputsDisableMergeAndSaveMerged) {
  torch::jit::Module model = load_model();
  const at::Tensor x = input();
  const at::Tensor base = run(model, x);  // executors of the loaded model exist before the adapter comes
  expect_close(base, expected("output_base"), "base");

  peft::load_adapter(model, case_dir().string());
  expect_close(run(model, x), expected("output"), "adapter");
  EXPECT_EQ(peft::adapter_names(model), std::vector<std::string>{"default"});

  peft::disable_adapters(model);
  expect_close(run(model, x), expected("output_base"), "disabled");
  peft::enable_adapters(model);
  expect_close(run(model, x), expected("output"), "enabled again");

  peft::merge_adapter(model);
  expect_close(run(model, x), expected("output_merged"), "merged");
  peft::unmerge_adapter(model);
  expect_close(run(model, x), expected("output"), "unmerged");

  // A model carrying adapters is not written to a TorchScript file (they would be lost).
  const fs::path out = fs::temp_directory_path() / ("peft_ts_" + case_name({GetParam(), 0}) + ".pt");
  expect_error<std::exception>([&] { model.save(out.string()); }, "peft::merge_and_unload");
  expect_error<std::exception>([&] { model.clone(); }, "peft::merge_and_unload");

  peft::merge_and_unload(model);
  EXPECT_FALSE(has_peft_attributes(model));
  EXPECT_TRUE(peft::adapter_names(model).empty());
  expect_close(run(model, x), expected("output_merged"), "merged and unloaded");
  const peft::StateDict merged = peft::safetensors::load_file((case_dir() / "merged_model.safetensors").string());
  for (const auto& item : model.named_parameters()) {
    ASSERT_TRUE(merged.contains(item.name)) << item.name;
    expect_close(item.value, merged[item.name], "merged weight " + item.name);
  }
  model.save(out.string());
  torch::jit::Module reloaded = torch::jit::load(out.string());
  reloaded.eval();
  expect_close(run(reloaded, x), expected("output"), "saved merged model");
  fs::remove(out);
}

TEST_P(TorchScriptParity, SavedAdapterHasPythonKeysAndValues) {
  torch::jit::Module model = load_model();
  peft::load_adapter(model, case_dir().string());
  const peft::StateDict python = peft::safetensors::load_file((case_dir() / "adapter_model.safetensors").string());
  const peft::StateDict ours = peft::get_peft_model_state_dict(model);
  ASSERT_EQ(ours.size(), python.size());
  for (const auto& item : ours) {
    const std::string key = "base_model.model." + item.key();
    ASSERT_TRUE(python.contains(key)) << key;
    expect_close(item.value(), python[key], key, 0);
  }
  const fs::path dir = fs::temp_directory_path() / ("peft_ts_adapter_" + case_name({GetParam(), 0}));
  fs::remove_all(dir);
  peft::save_adapter(model, dir.string());
  torch::jit::Module fresh = load_model();
  peft::load_adapter(fresh, dir.string());
  expect_close(run(fresh, input()), expected("output"), "reloaded adapter");
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Exports, TorchScriptParity, testing::ValuesIn(all_cases()), case_name);

// Every method on a TorchScript model: the vectors' *_mlp cases all use the MLP that mlp/traced.pt and
// mlp/scripted.pt export (same weights), so each adapter must give its case's outputs on both exports.
std::vector<std::string> vectors_mlp_cases() {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(vectors_dir())) {
    const std::string name = entry.path().filename().string();
    if (name.find("_mlp") != std::string::npos && fs::exists(entry.path() / "output.safetensors")) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

class TorchScriptEveryMethod : public testing::TestWithParam<std::string> {};

TEST_P(TorchScriptEveryMethod, VectorsCaseOnBothExports) {
  const fs::path dir = vectors_dir() / GetParam();
  const at::Tensor x = tensor_in(dir / "input.safetensors", "x");
  for (const char* file : {"traced.pt", "scripted.pt"}) {
    SCOPED_TRACE(file);
    torch::jit::Module model = torch::jit::load((data_dir() / "mlp" / file).string());
    model.eval();
    peft::load_adapter(model, dir.string());
    expect_close(run(model, x), tensor_in(dir / "output.safetensors", "output"), "adapter");
    if (fs::exists(dir / "output_merged.safetensors")) {
      peft::merge_and_unload(model);
      EXPECT_FALSE(has_peft_attributes(model));
      expect_close(run(model, x), tensor_in(dir / "output_merged.safetensors", "output"), "merged");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Vectors, TorchScriptEveryMethod, testing::ValuesIn(vectors_mlp_cases()),
                         [](const testing::TestParamInfo<std::string>& info) { return info.param; });

class TorchScriptModel : public testing::TestWithParam<std::string> {
 protected:
  fs::path gpt2() const { return data_dir() / "gpt2_small"; }
  torch::jit::Module load(const std::string& model = "gpt2_small") const {
    torch::jit::Module m = torch::jit::load((data_dir() / model / GetParam()).string());
    m.eval();
    return m;
  }
  at::Tensor ids() const { return tensor_in(gpt2() / "input.safetensors", "x"); }
};

TEST_P(TorchScriptModel, SwitchesBetweenTwoAdapters) {
  torch::jit::Module model = load();
  const fs::path dir = gpt2() / "lora_two_adapters";
  peft::load_adapter(model, dir.string());
  peft::load_adapter(model, (dir / "other").string(), "other");
  EXPECT_EQ(peft::adapter_names(model), (std::vector<std::string>{"default", "other"}));
  peft::set_adapter(model, "other");
  expect_close(run(model, ids()), tensor_in(dir / "output_other.safetensors", "output"), "other");
  peft::set_adapter(model, "default");
  expect_close(run(model, ids()), tensor_in(dir / "output_default.safetensors", "output"), "default");
  peft::delete_adapter(model, "default");
  expect_close(run(model, ids()), tensor_in(dir / "output_other.safetensors", "output"), "other after delete");
  peft::delete_adapter(model, "other");
  EXPECT_FALSE(has_peft_attributes(model));
  expect_close(run(model, ids()), tensor_in(gpt2() / "output_base.safetensors", "output"), "no adapters", 0);
}

// Scripted exports share one class type between submodules of one kind and shape (both blocks' mlp.c_fc): an
// adapter on one of them must leave the other as it was.
TEST_P(TorchScriptModel, AdapterOnOneInstanceOfASharedType) {
  torch::jit::Module model = load();
  const at::Tensor base = run(model, ids());
  peft::inject_adapter_in_model(
      peft::LoraConfig().r(2).init_lora_weights(false).target_modules(std::vector<std::string>{"transformer.h.0.mlp.c_fc"}),
      model);
  EXPECT_EQ(peft::targeted_module_names(model), std::vector<std::string>{"transformer.h.0.mlp.c_fc"});
  const at::Tensor adapted = run(model, ids());
  EXPECT_GT((adapted - base).abs().max().item<double>(), 1e-3);
  // Merged, only h.0's weight carries the delta: equal outputs mean h.1 never ran the adapter either.
  peft::merge_adapter(model);
  expect_close(run(model, ids()), adapted, "merged");
  peft::unmerge_adapter(model);
  peft::unload(model);
  expect_close(run(model, ids()), base, "unloaded", 1e-6);  // the merge and unmerge round
}

TEST_P(TorchScriptModel, FrozenCopyRunsAndSharesTheAdapters) {
  torch::jit::Module model = load();
  const fs::path dir = gpt2() / "lora";
  peft::load_adapter(model, dir.string());
  torch::jit::Module frozen = torch::jit::freeze(model);
  expect_close(run(frozen, ids()), tensor_in(dir / "output.safetensors", "output"), "frozen");
  peft::disable_adapters(model);
  expect_close(run(frozen, ids()), tensor_in(gpt2() / "output_base.safetensors", "output"), "frozen, disabled");
  torch::jit::Module optimized = torch::jit::optimize_for_inference(model);
  expect_close(run(optimized, ids()), tensor_in(gpt2() / "output_base.safetensors", "output"), "optimized");
  peft::enable_adapters(model);
  expect_close(run(optimized, ids()), tensor_in(dir / "output.safetensors", "output"), "optimized, enabled");
}

TEST_P(TorchScriptModel, RefusedTargetsLeaveTheModelAsItWas) {
  torch::jit::Module model = load();
  expect_error<peft::UnsupportedLayerError>(
      [&] {
        peft::inject_adapter_in_model(peft::LoraConfig().target_modules(std::vector<std::string>{"ln_1"}), model);
      },
      "ln_1");
  EXPECT_FALSE(has_peft_attributes(model));
  const fs::path out = fs::temp_directory_path() / ("peft_ts_refused_" + GetParam());
  model.save(out.string());  // still a plain TorchScript model
  fs::remove(out);
}

TEST_P(TorchScriptModel, TrainsOnlyTheAdapter) {
  torch::jit::Module model = load();
  peft::LoadAdapterOptions options;
  options.is_trainable = true;
  peft::load_adapter(model, (gpt2() / "lora").string(), "default", options);
  model.train();
  const std::vector<at::Tensor> trainable = peft::trainable_tensors(model);
  ASSERT_FALSE(trainable.empty());
  model.forward({ids()}).toTensor().pow(2).mean().backward();
  for (const at::Tensor& t : trainable) EXPECT_TRUE(t.grad().defined());
  for (const auto& item : model.named_parameters()) EXPECT_FALSE(item.value.grad().defined()) << item.name;
}

// A layer called twice by a traced parent has a second method (forward1); both must reach the adapter. Built
// with the TorchScript API as a trace would leave it.
TEST(TorchScript, EveryForwardMethodOfALayerIsRouted) {
  auto unit = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module root(c10::QualifiedName("__torch__.Twice"), unit, true);
  torch::jit::Module linear(c10::QualifiedName("__torch__.torch.nn.modules.linear.Linear"), unit, true);
  torch::manual_seed(0);
  linear.register_parameter("weight", torch::randn({4, 4}), false);
  linear.register_parameter("bias", torch::randn({4}), false);
  linear.define(
      "def forward(self, input: Tensor) -> Tensor:\n  return torch.linear(input, self.weight, self.bias)\n"
      "def forward1(self, input: Tensor) -> Tensor:\n  return torch.linear(input, self.weight, self.bias)\n");
  root.register_module("lin", linear);
  root.define("def forward(self, x: Tensor) -> Tensor:\n  return self.lin.forward1(torch.relu(self.lin.forward(x)))\n");
  root.eval();
  const at::Tensor x = torch::randn({2, 4});
  const at::Tensor base = run(root, x);
  peft::inject_adapter_in_model(peft::LoraConfig().r(2).init_lora_weights(false).target_modules({"lin"}), root);
  const at::Tensor adapted = run(root, x);
  // The expected output: the same math with the adapter merged into a torch::nn::Linear.
  torch::nn::Linear reference(4, 4);
  {
    torch::NoGradGuard no_grad;
    reference->weight.copy_(linear.attr("weight").toTensor());
    reference->bias.copy_(linear.attr("bias").toTensor());
  }
  peft::merge_adapter(root);
  {
    torch::NoGradGuard no_grad;
    reference->weight.copy_(linear.attr("weight").toTensor());
  }
  peft::unmerge_adapter(root);
  torch::NoGradGuard no_grad;
  expect_close(adapted, reference(torch::relu(reference(x))), "both calls adapted");
  EXPECT_GT((adapted - base).abs().max().item<double>(), 1e-3);
}

// What an error about a submodule that is not a layer says.
TEST(TorchScript, TargetingANonLayerNamesWhatItsForwardDoes) {
  torch::jit::Module model = torch::jit::load((data_dir() / "mlp" / "traced.pt").string());
  expect_error<peft::UnsupportedLayerError>(
      [&] { peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"relu"}), model); },
      "TorchScript submodule: its forward computes aten::relu");
}

INSTANTIATE_TEST_SUITE_P(Exports, TorchScriptModel, testing::Values("traced.pt", "scripted.pt"),
                         [](const testing::TestParamInfo<std::string>& info) {
                           return fs::path(info.param).stem().string();
                         });

}  // namespace
}  // namespace peft_test::torchscript_test
