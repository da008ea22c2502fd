// Lily: its variants in the shared fixtures, and how layers share lily_A / lily_B, checked against Python
// PEFT on a stack of identical blocks (tests/data/methods/lily/, made by its make_reference.py): the groups
// and their values for a seed, after loading (also with low_cpu_mem_usage), from a state dict, for a second
// adapter, and after deleting one.

#include <filesystem>
#include <fstream>
#include <set>

#include <unistd.h>

#include <peft/tuners/lily/config.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::lily_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    Lily, MethodVariants,
    testing::Values(Variant{"lily", false,
                            {{"peft_type", "LILY"}, {"target_modules", {"lin0", "lin1"}}, {"r", 4}, {"num_B", 3},
                             {"init_weights", false}},
                            /*merges=*/false},
                    Variant{"lily_regex_scaled", false,
                            {{"peft_type", "LILY"}, {"target_modules", "lin[01]"}, {"r", 2}, {"stride_A", 2},
                             {"scaling", 0.5}},
                            /*merges=*/false}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Lily, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"LILY", "emb"}, UnsupportedLayer{"LILY", "conv1d"}),
                         UnsupportedLayerName());

// The model of make_reference.py: 4 blocks of fc1, fc2 (Linear(8, 8)), then head.fc1 (Linear(8, 4)).
struct BlockImpl : torch::nn::Module {
  nn::Linear fc1{nullptr}, fc2{nullptr};
  BlockImpl() {
    fc1 = register_module("fc1", nn::Linear(8, 8));
    fc2 = register_module("fc2", nn::Linear(8, 8));
  }
  torch::Tensor forward(const torch::Tensor& h) { return h + fc2(torch::relu(fc1(h))); }
};
TORCH_MODULE(Block);

struct HeadImpl : torch::nn::Module {
  nn::Linear fc1{nullptr};
  HeadImpl() { fc1 = register_module("fc1", nn::Linear(8, 4)); }
};
TORCH_MODULE(Head);

struct StackImpl : torch::nn::Module {
  torch::nn::ModuleList blocks;
  Head head;
  StackImpl() {
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < 4; ++i) blocks->push_back(Block());
    head = register_module("head", Head());
  }
  torch::Tensor forward(torch::Tensor x) {
    for (const auto& block : *blocks) x = block->as<BlockImpl>()->forward(x);
    return head->fc1(x);
  }
};
TORCH_MODULE(Stack);

const fs::path& reference_dir() {
  static const fs::path dir = vectors_dir().parent_path() / "methods" / "lily";
  return dir;
}

const peft::StateDict& reference() {
  static const peft::StateDict tensors = peft::safetensors::load_file((reference_dir() / "reference.safetensors").string());
  return tensors;
}

const json& scenario(const std::string& name) {
  static const json meta = [] {
    std::ifstream in(reference_dir() / "reference.json");
    return json::parse(in);
  }();
  return meta.at("scenarios").at(name);
}

at::Tensor input() { return reference()["input"]; }

Stack base_stack() {
  Stack model;
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) p.value().copy_(reference()["base." + p.key()]);
  model->eval();
  return model;
}

std::shared_ptr<peft::PeftConfig> config_of(const std::string& name) {
  json config = scenario(name).at("config");
  config["peft_type"] = "LILY";
  return peft::config_from_json_string(config.dump());
}

/// Python's state dict of a scenario (its "<scenario>." keys, prefix removed), in file order.
peft::StateDict python_state_dict(const std::string& name) {
  peft::StateDict out;
  const std::string prefix = name + ".";
  for (const auto& item : reference()) {
    if (item.key().rfind(prefix, 0) == 0 && item.key() != prefix + "output") {
      out.insert(item.key().substr(prefix.size()), item.value());
    }
  }
  return out;
}

/// The adapter's state-dict keys grouped by the tensor they hold, as make_reference.py groups Python's.
std::vector<std::vector<std::string>> shared_groups(const peft::StateDict& state_dict) {
  std::map<const void*, std::vector<std::string>> by_tensor;
  for (const auto& item : state_dict) by_tensor[item.value().unsafeGetTensorImpl()].push_back(item.key());
  std::vector<std::vector<std::string>> groups;
  for (auto& [tensor, keys] : by_tensor) {
    std::sort(keys.begin(), keys.end());
    groups.push_back(keys);
  }
  std::sort(groups.begin(), groups.end());
  return groups;
}

std::vector<std::vector<std::string>> python_groups(const std::string& name) {
  return scenario(name).at("shared").get<std::vector<std::vector<std::string>>>();
}

void expect_state_dict_equal(const peft::StateDict& ours, const peft::StateDict& theirs, double atol = 0) {
  ASSERT_EQ(ours.size(), theirs.size());
  for (const auto& item : theirs) {
    const at::Tensor* t = ours.find(item.key());
    ASSERT_TRUE(t) << item.key();
    EXPECT_LE(max_abs_diff(*t, item.value()), atol) << item.key();
  }
}

// Python draws every layer's own A, B and router and then shares the first ones; the same seed gives the
// same values and the same sharing here.
TEST(Lily, SeededInjectionSharesAndDrawsLikePython) {
  WarningCapture warnings;
  for (const std::string name : {"suffixes", "regex"}) {
    SCOPED_TRACE(name);
    Stack model = base_stack();
    torch::manual_seed(scenario(name).at("seed").get<int64_t>());
    peft::inject_adapter_in_model(*config_of(name), model);
    const peft::StateDict ours = peft::get_peft_model_state_dict(*model);
    EXPECT_EQ(shared_groups(ours), python_groups(name));
    expect_state_dict_equal(ours, python_state_dict(name), 1e-7);
    EXPECT_LT(max_abs_diff(model->forward(input()), reference()[name + ".output"]), 1e-5);
  }
}

// The vector case's own seed (torch.manual_seed(1234) before the injection) gives its adapter too.
TEST(Lily, SeededInjectionOfTheVectorCase) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("lily_mlp");
  VectorModel model = base_model(c);
  torch::manual_seed(1234);
  peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), *model);
  expect_state_dict_equal(peft::get_peft_model_state_dict(*model), c.tensors("peft_state_dict.safetensors"), 1e-7);
}

TEST(Lily, SaveAndLoadKeepTheSharing) {
  WarningCapture warnings;
  Stack source = base_stack();
  peft::inject_adapter_in_model(*config_of("suffixes"), source);
  peft::set_peft_model_state_dict(*source, python_state_dict("suffixes"));
  const fs::path dir = fs::temp_directory_path() / ("peft_lily_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  peft::save_adapter(*source, dir.string());
  // Every layer's copy is saved under its own key, as in Python's file.
  const peft::StateDict file = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
  EXPECT_EQ(file.size(), python_state_dict("suffixes").size());
  for (bool low_cpu : {false, true}) {
    SCOPED_TRACE(low_cpu);
    Stack model = base_stack();
    peft::LoadAdapterOptions options;
    options.low_cpu_mem_usage = low_cpu;
    const peft::LoadResult result = peft::load_adapter(model, dir.string(), "default", options);
    EXPECT_TRUE(result.missing_keys.empty());
    EXPECT_TRUE(result.unexpected_keys.empty());
    EXPECT_EQ(shared_groups(peft::get_peft_model_state_dict(*model)), python_groups("suffixes"));
    EXPECT_LT(max_abs_diff(model->forward(input()), reference()["suffixes.output"]), 1e-5);
  }
  fs::remove_all(dir);
}

// Injected from a state dict's keys with target_modules ["fc1"]: the fc2 layers match no entry and, as in
// Python, share nothing; low_cpu_mem_usage keeps the sharing through the load, as Python's assign does.
TEST(Lily, StateDictInjectionGroupsByTheConfigsTargets) {
  for (const std::string name : {"state_dict", "low_cpu"}) {
    SCOPED_TRACE(name);
    WarningCapture warnings;
    const bool low_cpu = name == "low_cpu";
    const peft::StateDict weights = python_state_dict("suffixes");
    Stack model = base_stack();
    peft::inject_adapter_in_model(*config_of(name), model, "default", low_cpu, weights);
    EXPECT_TRUE(warnings.contains("The state_dict contained these additional target modules"));
    peft::set_peft_model_state_dict(*model, weights, "default", low_cpu);
    const peft::StateDict ours = peft::get_peft_model_state_dict(*model);
    EXPECT_EQ(shared_groups(ours), python_groups(name));
    expect_state_dict_equal(ours, python_state_dict(name));
    EXPECT_LT(max_abs_diff(model->forward(input()), reference()[name + ".output"]), 1e-5);
  }
}

// A second adapter gets its own shared modules; deleting the first leaves them intact.
TEST(Lily, SecondAdapterAndDelete) {
  WarningCapture warnings;
  Stack model = base_stack();
  torch::manual_seed(1);
  peft::inject_adapter_in_model(*config_of("suffixes"), model);
  torch::manual_seed(3);
  peft::inject_adapter_in_model(*config_of("second"), model, "other");
  const peft::StateDict other = peft::get_peft_model_state_dict(*model, "other");
  EXPECT_EQ(shared_groups(other), python_groups("second"));
  expect_state_dict_equal(other, python_state_dict("second"), 1e-7);
  EXPECT_EQ(shared_groups(peft::get_peft_model_state_dict(*model)), python_groups("suffixes"));
  // No tensor of one adapter is another's.
  std::set<const void*> defaults;
  for (const auto& item : peft::get_peft_model_state_dict(*model)) defaults.insert(item.value().unsafeGetTensorImpl());
  for (const auto& item : other) EXPECT_FALSE(defaults.count(item.value().unsafeGetTensorImpl())) << item.key();

  peft::set_adapter(*model, "other");
  const at::Tensor with_other = model->forward(input());
  EXPECT_LT(max_abs_diff(with_other, reference()["second.output"]), 1e-5);

  peft::delete_adapter(*model, "default");
  EXPECT_EQ(peft::adapter_names(*model), std::vector<std::string>{"other"});
  for (const auto& p : model->named_parameters()) EXPECT_EQ(p.key().find(".default"), std::string::npos) << p.key();
  EXPECT_EQ(shared_groups(peft::get_peft_model_state_dict(*model, "other")), python_groups("second"));
  EXPECT_LT(max_abs_diff(model->forward(input()), with_other), 1e-6);
}

// Training a shared module: one tensor, so every layer sees each update, and its gradient sums the layers'.
TEST(Lily, SharedModulesTrainAsOne) {
  WarningCapture warnings;
  Stack model = base_stack();
  peft::inject_adapter_in_model(*config_of("suffixes"), model);
  peft::set_peft_model_state_dict(*model, python_state_dict("suffixes"));
  model->train();
  model->forward(input()).pow(2).sum().backward();
  const auto params = model->named_parameters();
  const at::Tensor& b0 = params["blocks.0.fc1.lily_B.default.weight"];
  const at::Tensor& b3 = params["blocks.3.fc1.lily_B.default.weight"];
  ASSERT_TRUE(b0.grad().defined());
  EXPECT_EQ(b0.unsafeGetTensorImpl(), b3.unsafeGetTensorImpl());
  EXPECT_NE(params["blocks.0.fc1.lily_A.default.weight"].unsafeGetTensorImpl(),
            params["blocks.2.fc1.lily_A.default.weight"].unsafeGetTensorImpl());
  {
    torch::NoGradGuard no_grad;
    b0.add_(1.0);
  }
  EXPECT_TRUE(torch::equal(b0, b3));
}

// Python counts a shared tensor once (254 trainable of 866 for this model and config, from Python PEFT).
TEST(Lily, TrainableParametersCountSharedTensorsOnce) {
  WarningCapture warnings;
  Stack model = base_stack();
  peft::inject_adapter_in_model(peft::LilyConfig().r(2).stride_A(2).num_B(3).target_modules({"fc1", "fc2"}), model);
  const peft::ParameterCount count = peft::trainable_parameters(*model);
  EXPECT_EQ(count.trainable, 254);
  EXPECT_EQ(count.total, 866);
}

// Several entries can end a layer's name; the longest decides its group (Python takes whichever its
// target_modules set yields last, which its comment says should be the longest).
TEST(Lily, LongestMatchingEntryGroups) {
  WarningCapture warnings;
  Stack model = base_stack();
  auto config = peft::LilyConfig().r(2).stride_A(2).num_B(2).target_modules({"fc1", "blocks.0.fc1"});
  peft::inject_adapter_in_model(config, model);
  const auto params = model->named_parameters();
  auto same = [&](const std::string& a, const std::string& b, const char* container) {
    return params[a + "." + container + ".default.weight"].unsafeGetTensorImpl() ==
           params[b + "." + container + ".default.weight"].unsafeGetTensorImpl();
  };
  EXPECT_FALSE(same("blocks.0.fc1", "blocks.1.fc1", "lily_B"));  // blocks.0.fc1 is a group of its own
  EXPECT_TRUE(same("blocks.1.fc1", "blocks.3.fc1", "lily_B"));
  EXPECT_TRUE(same("blocks.1.fc1", "blocks.2.fc1", "lily_A"));   // stride 2 from blocks.1.fc1 on
  EXPECT_FALSE(same("blocks.2.fc1", "blocks.3.fc1", "lily_A"));
  EXPECT_FALSE(same("blocks.3.fc1", "head.fc1", "lily_B"));      // same entry, another shape
}

TEST(Lily, InitWeightsStartsAsTheBaseModel) {
  WarningCapture warnings;
  Stack model = base_stack();
  const at::Tensor base = model->forward(input());
  peft::inject_adapter_in_model(peft::LilyConfig().r(4).stride_A(2).target_modules({"fc1", "fc2"}), model);
  EXPECT_LT(max_abs_diff(model->forward(input()), base), 1e-7);
}

// A bfloat16 model: the adapter lives in the layer's dtype, x is cast to it, the output keeps the base's.
TEST(Lily, Bfloat16LayersComputeInTheirDtype) {
  WarningCapture warnings;
  Stack model = base_stack();
  model->to(torch::kBFloat16);
  const at::Tensor x = input().to(torch::kBFloat16);
  const at::Tensor base = model->forward(x);
  peft::inject_adapter_in_model(peft::LilyConfig().r(2).stride_A(2).num_B(3).target_modules({"fc1", "fc2"}), model);
  for (const auto& item : peft::get_peft_model_state_dict(*model)) EXPECT_EQ(item.value().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(model->forward(x), base)) << "B starts at zero";
  peft::set_peft_model_state_dict(*model, python_state_dict("suffixes"));
  const at::Tensor adapted = model->forward(x);
  EXPECT_EQ(adapted.scalar_type(), torch::kBFloat16);
  EXPECT_LT(max_abs_diff(adapted.to(torch::kFloat), reference()["suffixes.output"]), 0.1);
}

TEST(Lily, MergeIsRefusedButUnloadWorks) {
  WarningCapture warnings;
  Stack model = base_stack();
  const at::Tensor base = model->forward(input());
  peft::inject_adapter_in_model(*config_of("suffixes"), model);
  const ModelSnapshot before(*model);
  EXPECT_THROW(peft::merge_adapter(*model, {"default"}, /*safe_merge=*/true), peft::MergeError);
  EXPECT_THROW(peft::merge_and_unload(*model), peft::MergeError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  peft::unload(*model);
  EXPECT_TRUE(peft::targeted_module_names(*model).empty());
  EXPECT_LT(max_abs_diff(model->forward(input()), base), 1e-7);
}

TEST(Lily, ConfigChecksArePythons) {
  auto message = [](json config) {
    config["peft_type"] = "LILY";
    config["target_modules"] = {"fc1"};
    try {
      peft::config_from_json_string(config.dump())->validate();
    } catch (const peft::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(message({{"stride_A", 0}}), "`stride_A` must be at least 1.");
  EXPECT_EQ(message({{"num_B", 1}}), "`num_B` must be at least 2 for the router to be trained.");
  EXPECT_EQ(message({{"r", 0}}), "`r` should be a positive integer value but the value passed is 0");
  EXPECT_EQ(message({{"stride_A", 3}, {"num_B", 2}}), "accepted");
  Stack model = base_stack();
  const ModelSnapshot before(*model);
  EXPECT_THROW(peft::inject_adapter_in_model(peft::LilyConfig().num_B(1).target_modules({"fc1"}), model),
               peft::ConfigError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

// layers_to_transform picks blocks (Python's layer patterns need the ModuleList below the root, hence
// `encoder`); the stride counts the selected layers only.
struct EncoderImpl : torch::nn::Module {
  Stack encoder;
  EncoderImpl() { encoder = register_module("encoder", base_stack()); }
};
TORCH_MODULE(Encoder);

TEST(Lily, LayersToTransformSelectsBlocks) {
  WarningCapture warnings;
  Encoder model;
  auto config = peft::LilyConfig().r(2).stride_A(2).target_modules({"fc1"}).layers_to_transform(std::vector<int64_t>{1, 2, 3});
  peft::inject_adapter_in_model(config, model);
  EXPECT_EQ(peft::targeted_module_names(*model),
            (std::vector<std::string>{"encoder.blocks.1.fc1", "encoder.blocks.2.fc1", "encoder.blocks.3.fc1"}));
  const auto params = model->named_parameters();
  EXPECT_EQ(params["encoder.blocks.1.fc1.lily_A.default.weight"].unsafeGetTensorImpl(),
            params["encoder.blocks.2.fc1.lily_A.default.weight"].unsafeGetTensorImpl());
  EXPECT_NE(params["encoder.blocks.2.fc1.lily_A.default.weight"].unsafeGetTensorImpl(),
            params["encoder.blocks.3.fc1.lily_A.default.weight"].unsafeGetTensorImpl());
}

}  // namespace
}  // namespace peft_test::lily_test
