// LoRA's layer_replication against Python PEFT's replicate_layers (tests/data/methods/lora_layer_replication/, made
// by its make_reference.py): a llama-like model whose model.layers [0, 1, 2] become [0, 1, 1, 2] with shared base
// weights and one adapter per layer; outputs, gradients, keys and saved files; and the refusals, each leaving the
// model as it was.

#include <torch/torch.h>

#include <algorithm>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include <peft/peft.h>

#include "support/errors.h"
#include "support/layers.h"
#include "support/scratch.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::lora_layer_replication_test {
namespace {

namespace fs = std::filesystem;

fs::path data_dir() { return cases_dir().parent_path() / "methods" / "lora_layer_replication"; }

struct MlpImpl : torch::nn::Cloneable<MlpImpl> {
  nn::Linear up{nullptr}, down{nullptr};
  MlpImpl() { reset(); }
  void reset() override {
    up = register_module("up", nn::Linear(8, 16));
    down = register_module("down", nn::Linear(16, 8));
  }
  at::Tensor forward(const at::Tensor& x) { return down(torch::relu(up(x))); }
};
TORCH_MODULE(Mlp);

struct BlockImpl : torch::nn::Cloneable<BlockImpl> {
  nn::Linear q_proj{nullptr}, v_proj{nullptr};
  Mlp mlp{nullptr};
  at::Tensor scale;
  BlockImpl() { reset(); }
  void reset() override {
    q_proj = register_module("q_proj", nn::Linear(8, 8));
    v_proj = register_module("v_proj", nn::Linear(8, 8));
    mlp = register_module("mlp", Mlp());
    scale = register_buffer("scale", torch::ones({8}));
  }
  at::Tensor forward(const at::Tensor& x) { return x + mlp(torch::tanh(q_proj(x) * scale + v_proj(x))); }
};
TORCH_MODULE(Block);

// A block LibTorch cannot clone (a plain torch::nn::Module).
struct PlainBlockImpl : torch::nn::Module {
  nn::Linear q_proj{8, 8};
  PlainBlockImpl() { register_module("q_proj", q_proj); }
  at::Tensor forward(const at::Tensor& x) { return q_proj(x); }
};

template <class B>
struct InnerImpl : torch::nn::Module {
  torch::nn::ModuleList layers;
  explicit InnerImpl(int n) {
    for (int i = 0; i < n; ++i) layers->push_back(std::make_shared<B>());
    register_module("layers", layers);
  }
  at::Tensor forward(at::Tensor x) {
    for (const auto& layer : *layers) x = layer->as<B>()->forward(x);
    return x;
  }
};

template <class B>
struct LlamaImpl : torch::nn::Module {
  std::shared_ptr<InnerImpl<B>> model;
  nn::Linear lm_head{8, 4};
  explicit LlamaImpl(int n = 3) : model(std::make_shared<InnerImpl<B>>(n)) {
    register_module("model", model);
    register_module("lm_head", lm_head);
  }
  at::Tensor forward(const at::Tensor& x) { return lm_head(model->forward(x)); }
};
using Llama = LlamaImpl<BlockImpl>;

// The model of make_reference.py with its base weights, written in place (BlockImpl::scale is a member handle).
std::shared_ptr<Llama> base_model() {
  auto model = std::make_shared<Llama>();
  const peft::StateDict weights = peft::safetensors::load_file((data_dir() / "base.safetensors").string());
  torch::NoGradGuard no_grad;
  size_t written = 0;
  for (auto& p : model->named_parameters()) written += p.value().copy_(weights[p.key()]).defined();
  for (auto& b : model->named_buffers()) written += b.value().copy_(weights[b.key()]).defined();
  EXPECT_EQ(written, weights.size());
  model->eval();
  return model;
}

peft::LoraConfig config() {
  return peft::LoraConfig().r(2).lora_alpha(4).target_modules({"q_proj", "v_proj"}).init_lora_weights(false)
      .layer_replication({{0, 2}, {1, 3}});
}

at::Tensor input() { return peft::safetensors::load_file((data_dir() / "input.safetensors").string())["x"]; }
peft::StateDict reference() { return peft::safetensors::load_file((data_dir() / "output.safetensors").string()); }
nlohmann::json json_of(const fs::path& file) { return nlohmann::json::parse(std::ifstream(file)); }

at::Tensor forward(torch::nn::Module& model, const at::Tensor& x) {
  torch::NoGradGuard no_grad;
  return static_cast<Llama&>(model).forward(x);
}

// What a failed injection must not change: the list, its entries, every tensor (identity and values).
struct Snapshot {
  std::vector<const torch::nn::Module*> entries;
  std::vector<std::string> children;
  std::vector<std::pair<std::string, const void*>> tensors;
  std::vector<at::Tensor> values;
  template <class M>
  explicit Snapshot(M& model) {
    for (const auto& entry : *model.model->layers) entries.push_back(entry.get());
    for (const auto& child : model.model->layers->named_children()) children.push_back(child.key());
    for (const auto& p : model.named_parameters()) {
      tensors.emplace_back(p.key(), p.value().unsafeGetTensorImpl());
      values.push_back(p.value().clone());
    }
    for (const auto& b : model.named_buffers()) tensors.emplace_back(b.key(), b.value().unsafeGetTensorImpl());
  }
  bool operator==(const Snapshot& other) const {
    if (entries != other.entries || children != other.children || tensors != other.tensors) return false;
    for (size_t i = 0; i < values.size(); ++i) {
      if (!values[i].equal(other.values[i])) return false;
    }
    return true;
  }
};

std::set<std::string> state_keys(const torch::nn::Module& model) {
  std::set<std::string> keys;
  for (const auto& p : model.named_parameters()) keys.insert(p.key());
  for (const auto& b : model.named_buffers()) keys.insert(b.key());
  return keys;
}

void expect_python_outputs(Llama& model) {
  const peft::StateDict ref = reference();
  EXPECT_LT(max_abs_diff(forward(model, input()), ref["active"]), 1e-5);
  peft::disable_adapters(model);
  EXPECT_LT(max_abs_diff(forward(model, input()), ref["disabled"]), 1e-5);
  peft::enable_adapters(model);
}

TEST(LoraLayerReplication, FromConfigMatchesPython) {
  auto model = base_model();
  const torch::nn::ModuleListImpl* list = model->model->layers.get();
  const auto* block1 = model->model->layers[1].get();
  peft::inject_adapter_in_model(config(), *model);
  // The user's list object, rebuilt in place: [0, 1, 1', 2]; the first use of a layer is the user's block.
  ASSERT_EQ(model->model->layers.get(), list);
  ASSERT_EQ(model->model->layers->size(), 4u);
  EXPECT_EQ(model->model->layers[1].get(), block1);
  EXPECT_NE(model->model->layers[2].get(), block1);
  EXPECT_EQ(model->model->layers->named_children()[2].value().get(), model->model->layers[2].get());
  peft::set_peft_model_state_dict(*model, peft::safetensors::load_file((data_dir() / "adapter" / "adapter_model.safetensors").string()));
  expect_python_outputs(*model);

  // Gradients of each layer's own adapter.
  model->train();
  model->forward(input()).sum().backward();
  const peft::StateDict ref = reference();
  int compared = 0;
  for (const auto& p : model->named_parameters()) {
    if (p.key().find("lora_") == std::string::npos) continue;
    std::string key = p.key();
    key.erase(key.find(".default"), std::string(".default").size());
    ASSERT_TRUE(ref.contains("grad." + key)) << key;
    EXPECT_LT(max_abs_diff(p.value().grad(), ref["grad." + key]), 1e-5) << key;
    ++compared;
  }
  EXPECT_EQ(compared, 16);

  // The replicated base model has Python's keys, and the same tensors are shared.
  const nlohmann::json keys = json_of(data_dir() / "keys.json");
  peft::unload(*model);
  const auto python_keys = keys["replicated"].get<std::vector<std::string>>();
  EXPECT_EQ(state_keys(*model), std::set<std::string>(python_keys.begin(), python_keys.end()));
  std::set<std::pair<std::string, std::string>> shared, python_shared;
  const auto params = model->named_parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    for (size_t j = i + 1; j < params.size(); ++j) {
      if (params[i].value().data_ptr() == params[j].value().data_ptr()) shared.emplace(params[i].key(), params[j].key());
    }
  }
  for (const auto& pair : keys["shared"]) python_shared.emplace(pair[0].get<std::string>(), pair[1].get<std::string>());
  EXPECT_EQ(shared, python_shared);
  EXPECT_LT(max_abs_diff(forward(*model, input()), ref["disabled"]), 1e-5) << "unload keeps the replicated layers";
}

TEST(LoraLayerReplication, LoadAdapterAndSaveMatchPython) {
  auto model = base_model();
  peft::load_adapter(*model, (data_dir() / "adapter").string());
  ASSERT_EQ(model->model->layers->size(), 4u);
  expect_python_outputs(*model);

  Scratch scratch("lora_layer_replication");
  peft::save_adapter(*model, scratch.path().string());
  const peft::StateDict ours = peft::safetensors::load_file((scratch / "adapter_model.safetensors").string());
  const peft::StateDict python = peft::safetensors::load_file((data_dir() / "adapter" / "adapter_model.safetensors").string());
  const auto key_set = [](const peft::StateDict& d) {
    const std::vector<std::string> keys = d.keys();
    return std::set<std::string>(keys.begin(), keys.end());
  };
  ASSERT_EQ(key_set(ours), key_set(python));
  for (const auto& item : python) EXPECT_TRUE(ours[item.key()].equal(item.value())) << item.key();

  nlohmann::json a = json_of(scratch / "adapter_config.json"), b = json_of(data_dir() / "adapter" / "adapter_config.json");
  EXPECT_EQ(a["layer_replication"], nlohmann::json::parse("[[0, 2], [1, 3]]"));
  for (auto* config : {&a, &b}) {
    auto targets = (*config)["target_modules"].get<std::vector<std::string>>();  // a set in Python
    std::sort(targets.begin(), targets.end());
    (*config)["target_modules"] = targets;
    for (const char* key : {"peft_version", "auto_mapping"}) config->erase(key);
  }
  EXPECT_EQ(a, b) << a.dump(1) << "\n" << b.dump(1);

  // The targets named by the state dict's keys: the replicated layers exist when they are matched.
  auto from_keys = base_model();
  peft::inject_adapter_in_model(peft::LoraConfig().r(2).lora_alpha(4).layer_replication({{0, 2}, {1, 3}}), *from_keys,
                                "default", false, python);
  EXPECT_EQ(peft::targeted_module_names(*from_keys).size(), 8u);
  peft::set_peft_model_state_dict(*from_keys, python);  // the keys select the layers; the values are loaded here
  EXPECT_LT(max_abs_diff(forward(*from_keys, input()), reference()["active"]), 1e-5);
}

TEST(LoraLayerReplication, CopiesShareTheBaseTensors) {
  auto model = base_model();
  peft::inject_adapter_in_model(config(), *model);
  auto& layers = *model->model->layers;
  BlockImpl& original = *layers[1]->as<Block>();
  BlockImpl& copy = *layers[2]->as<Block>();
  // The copy's own member handles (LinearImpl::weight, the registry entry) see the original's storage.
  EXPECT_EQ(copy.q_proj->weight.data_ptr(), original.q_proj->weight.data_ptr());
  EXPECT_EQ(copy.mlp->down->bias.data_ptr(), original.mlp->down->bias.data_ptr());
  EXPECT_EQ(copy.named_parameters()["q_proj.weight"].data_ptr(), original.q_proj->weight.data_ptr());
  // In-place changes of the original are seen by the copy; buffers are copies, as Python's deepcopy makes them.
  {
    torch::NoGradGuard no_grad;
    original.q_proj->weight.add_(1.0);
  }
  EXPECT_TRUE(copy.q_proj->weight.equal(original.q_proj->weight));
  EXPECT_NE(copy.scale.data_ptr(), original.scale.data_ptr());
  EXPECT_TRUE(copy.scale.equal(original.scale));
  // Base tensors are frozen everywhere, copies included; each layer's adapter is its own and trains.
  for (const auto& p : model->named_parameters()) {
    EXPECT_EQ(p.value().requires_grad(), p.key().find("lora_") != std::string::npos) << p.key();
  }
  EXPECT_NE(copy.q_proj->named_parameters()["lora_A.default.weight"].data_ptr(),
            original.q_proj->named_parameters()["lora_A.default.weight"].data_ptr());
}

TEST(LoraLayerReplication, MergeIsRefusedWithPythonsText) {
  auto model = base_model();
  peft::load_adapter(*model, (data_dir() / "adapter").string());
  const Snapshot before(*model);
  expect_error<peft::MergeError>([&] { peft::merge_and_unload(*model); },
                                 "Cannot merge LORA layers when base model layers are replicated");
  expect_error<peft::MergeError>([&] { peft::merge_adapter(*model); }, "base model layers are replicated");
  EXPECT_TRUE(Snapshot(*model) == before);
  EXPECT_LT(max_abs_diff(forward(*model, input()), reference()["active"]), 1e-5);
  // peft-cpp merge (into weights files) too.
  expect_error<peft::MergeError>(
      [&] {
        peft::merge_into_weights(*peft::load_config((data_dir() / "adapter" / "adapter_config.json").string()),
                                 peft::safetensors::load_file((data_dir() / "adapter" / "adapter_model.safetensors").string()),
                                 peft::safetensors::load_file((data_dir() / "base.safetensors").string()));
      },
      "Cannot merge LORA layers when base model layers are replicated");
}

TEST(LoraLayerReplication, SecondAdapter) {
  WarningCapture warnings;  // "Already found a `peft_config` attribute in the model", as Python warns
  auto model = base_model();
  peft::inject_adapter_in_model(config(), *model);
  // Without layer_replication: every layer of the replicated list gets it.
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"q_proj"}), *model, "plain");
  int adapted = 0;
  for (const auto& entry : *model->model->layers) {
    adapted += entry->as<Block>()->q_proj->named_parameters().contains("lora_A.plain.weight");
  }
  EXPECT_EQ(adapted, 4);
  // With it, Python replicates the replicated list again; copying a block with adapters is refused here.
  const Snapshot before(*model);
  expect_error<peft::ConfigError>(
      [&] { peft::inject_adapter_in_model(config().layer_replication({{0, 4}, {3, 4}}), *model, "again"); },
      "'model.layers.3.q_proj' already carries adapters");
  EXPECT_TRUE(Snapshot(*model) == before);
  // A map that copies nothing rearranges the list.
  peft::inject_adapter_in_model(config().layer_replication({{1, 4}}), *model, "dropped");
  EXPECT_EQ(model->model->layers->size(), 3u);
  EXPECT_TRUE(warnings.contains("multiple adapters"));
}

TEST(LoraLayerReplication, ErrorsLeaveTheModelUnchanged) {
  {  // an index past the list (Python's IndexError text), after a copy was made
    auto model = base_model();
    const Snapshot before(*model);
    expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(config().layer_replication({{0, 2}, {1, 4}}), *model); },
                                    "index 3 is out of range");
    EXPECT_TRUE(Snapshot(*model) == before);
  }
  {  // negative indices count from the end, as Python's ModuleList indexing does
    auto model = base_model();
    const auto* last = model->model->layers[2].get();
    peft::inject_adapter_in_model(config().layer_replication({{-1, 1}}), *model);
    ASSERT_EQ(model->model->layers->size(), 2u);
    EXPECT_EQ(model->model->layers[0].get(), last);
  }
  {  // a failure after the replication (no target matched) undoes it
    auto model = base_model();
    const Snapshot before(*model);
    expect_error<peft::NoMatchingPeftModuleError>(
        [&] { peft::inject_adapter_in_model(config().target_modules({"k_proj"}), *model); }, "k_proj");
    EXPECT_TRUE(Snapshot(*model) == before);
  }
  {  // blocks LibTorch cannot clone
    auto model = std::make_shared<LlamaImpl<PlainBlockImpl>>(2);
    const Snapshot before(*model);
    expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(config().layer_replication({{0, 2}, {0, 1}}), *model); },
                                    "Derive the block from torch::nn::Cloneable<Impl>");
    expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(config().layer_replication({{0, 2}, {0, 1}}), *model); },
                                    "'model.layers.0'");
    EXPECT_TRUE(Snapshot(*model) == before);
    EXPECT_TRUE(peft::adapter_names(*model).empty());
  }
  {  // no layer list
    struct NoListImpl : torch::nn::Module {
      std::shared_ptr<BlockImpl> model = register_module("model", std::make_shared<BlockImpl>());
    };
    NoListImpl model;
    const auto params = model.named_parameters().keys();
    expect_error<peft::ConfigError>(
        [&] { peft::inject_adapter_in_model(config(), model); },
        "Could not locate the layers attribute in the model. Expected Llama, Bert or Falcon compatible architectures.");
    EXPECT_EQ(model.named_parameters().keys(), params);
    EXPECT_EQ(model.model->named_children().size(), 3u);
  }
}

TEST(LoraLayerReplication, ConfigJson) {
  const auto read = [](const std::string& value) {
    return peft::config_from_json_string(R"({"peft_type": "LORA", "target_modules": ["q_proj"], "layer_replication": )" +
                                         value + "}");
  };
  const auto config = std::dynamic_pointer_cast<peft::LoraConfig>(read("[[0, 4], [2, 5]]"));
  ASSERT_TRUE(config && config->layer_replication());
  EXPECT_EQ(*config->layer_replication(), (std::vector<std::pair<int64_t, int64_t>>{{0, 4}, {2, 5}}));
  EXPECT_EQ(nlohmann::json::parse(config->to_json_string())["layer_replication"], nlohmann::json::parse("[[0, 4], [2, 5]]"));
  EXPECT_FALSE(std::dynamic_pointer_cast<peft::LoraConfig>(read("null"))->layer_replication());
  EXPECT_TRUE(nlohmann::json::parse(peft::LoraConfig().to_json_string())["layer_replication"].is_null());
  expect_error<peft::ConfigError>([&] { read("[[0]]"); }, "layer_replication");
  expect_error<peft::ConfigError>([&] { read("[0, 4]"); }, "layer_replication");
  // AdaLoRA (whose Python config derives from LoraConfig) keeps refusing it.
  expect_error<peft::ConfigError>(
      [&] {
        peft::config_from_json_string(R"({"peft_type": "ADALORA", "target_modules": ["q_proj"], "total_step": 10, )"
                                      R"("layer_replication": [[0, 1]]})");
      },
      "layer replication is not supported");
}

}  // namespace
}  // namespace peft_test::lora_layer_replication_test
