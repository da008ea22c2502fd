// inject_adapter_in_model on unmodified LibTorch models: structure, forward, errors (with Python PEFT's
// texts from tests/data/vectors/errors/errors.json), trainability, meta-device injection, state-dict injection.

#include <cstdlib>
#include <fstream>

#include <ATen/CPUGeneratorImpl.h>

#include "support/layers.h"
#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::inject_test {
namespace {

// The guide's model, as a user writes it.
struct DummyModelImpl : torch::nn::Module {
  nn::Embedding embedding{nullptr};
  nn::Linear linear{nullptr}, lm_head{nullptr};
  DummyModelImpl() {
    embedding = register_module("embedding", nn::Embedding(10, 10));
    linear = register_module("linear", nn::Linear(10, 10));
    lm_head = register_module("lm_head", nn::Linear(10, 10));
  }
  torch::Tensor forward(torch::Tensor ids) { return lm_head(linear(embedding(ids))); }
};
TORCH_MODULE(DummyModel);

const auto kIds = [] { return torch::tensor({{0, 1, 2, 3, 4, 5, 6, 7}}); };

nlohmann::json errors() {
  std::ifstream in(vectors_dir() / "errors" / "errors.json");
  return nlohmann::json::parse(in);
}
std::string expected_error(const std::string& name) { return errors()[name]["message"].get<std::string>(); }

VectorModel mlp() {
  torch::manual_seed(0);
  return VectorModel(VectorCase::load("lora_mlp_basic").model);
}

template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception";
  return "";
}

std::vector<std::string> names_of(const torch::nn::Module& m) { return m.named_parameters().keys(); }

TEST(Inject, GuideWalkthroughStructure) {
  DummyModel model;
  auto before = names_of(*model);
  auto cfg = peft::LoraConfig().lora_alpha(16).lora_dropout(0.1).r(64).bias("none").target_modules({"linear"});
  const torch::nn::Module* object = model.get();
  peft::inject_adapter_in_model(cfg, model);
  EXPECT_EQ(model.get(), object);  // the same object, modified in place
  const auto params = model->named_parameters();
  for (const auto& name : before) EXPECT_TRUE(params.contains(name)) << name;  // base names unchanged
  EXPECT_EQ(params["linear.lora_A.default.weight"].sizes(), torch::IntArrayRef({64, 10}));
  EXPECT_EQ(params["linear.lora_B.default.weight"].sizes(), torch::IntArrayRef({10, 64}));
  EXPECT_EQ(params.size(), before.size() + 2);
  std::vector<std::string> children = model->linear->named_children().keys();
  EXPECT_EQ(children, std::vector<std::string>({"lora_dropout", "lora_A", "lora_B", "lora_embedding_A",
                                                "lora_embedding_B", "lora_magnitude_vector"}));
  std::ostringstream printed;
  printed << *model;
  for (const char* part : {"(lora_dropout): torch::nn::ModuleDict", "(default): torch::nn::Dropout(p=0.1",
                           "(default): torch::nn::Linear(in_features=10, out_features=64, bias=false)",
                           "(default): torch::nn::Linear(in_features=64, out_features=10, bias=false)",
                           "(lora_embedding_A): torch::nn::ParameterDict()"}) {
    EXPECT_NE(printed.str().find(part), std::string::npos) << part << "\n" << printed.str();
  }
}

TEST(Inject, ForwardRunsThroughTheAdapter) {
  torch::manual_seed(0);
  DummyModel model;
  model->eval();
  const auto base = model->forward(kIds());
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).lora_alpha(8).target_modules({"linear"}), model);
  // init_lora_weights=true: B is zero, the adapter starts as a no-op.
  EXPECT_TRUE(torch::equal(model->forward(kIds()), base));
  // Give B values: y = lm_head(W h + b + (alpha/r) B A h).
  torch::NoGradGuard no_grad;
  auto params = model->named_parameters();
  params["linear.lora_B.default.weight"].normal_();
  const auto A = params["linear.lora_A.default.weight"];
  const auto B = params["linear.lora_B.default.weight"];
  const auto h = model->embedding->weight.index({kIds()});
  const auto linear = torch::linear(h, model->linear->weight, model->linear->bias) + 2.0 * torch::matmul(torch::matmul(h, A.t()), B.t());
  const auto expected = torch::linear(linear, model->lm_head->weight, model->lm_head->bias);
  EXPECT_TRUE(torch::allclose(model->forward(kIds()), expected, 1e-5, 1e-5));
}

TEST(Inject, RsloraScalesBySqrtR) {
  torch::manual_seed(0);
  torch::nn::Sequential model(nn::Linear(6, 5));
  model->eval();
  const auto x = torch::randn({3, 6});
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).lora_alpha(8).use_rslora(true).init_lora_weights(false).target_modules({"0"}), model);
  auto params = model->named_parameters();
  const auto& W = params["0.weight"];
  const auto expected = torch::linear(x, W, params["0.bias"]) +
                        (8.0 / 2.0) * torch::matmul(torch::matmul(x, params["0.lora_A.default.weight"].t()), params["0.lora_B.default.weight"].t());
  EXPECT_TRUE(torch::allclose(model->forward(x), expected, 1e-5, 1e-5));
}

TEST(Inject, SequentialForwardReachesAdapters) {
  torch::manual_seed(0);
  torch::nn::Sequential model(nn::Linear(4, 8), torch::nn::ReLU(), nn::Linear(8, 3));
  model->eval();
  const auto x = torch::randn({5, 4});
  const auto base = model->forward(x);
  peft::inject_adapter_in_model(peft::LoraConfig().r(2).init_lora_weights(false).target_modules({"0", "2"}), model);
  const auto out = model->forward(x);
  EXPECT_FALSE(torch::allclose(out, base));
  // Recompute by hand through the adapter tensors.
  auto p = model->named_parameters();
  auto lora = [&](const std::string& n, const torch::Tensor& in) {
    return torch::linear(in, p[n + ".weight"], p[n + ".bias"]) +
           4.0 * torch::matmul(torch::matmul(in, p[n + ".lora_A.default.weight"].t()), p[n + ".lora_B.default.weight"].t());
  };
  EXPECT_TRUE(torch::allclose(out, lora("2", torch::relu(lora("0", x))), 1e-5, 1e-5));
}

TEST(Inject, ModuleListAndModuleDictChildrenAreTargets) {
  struct NetImpl : torch::nn::Module {
    torch::nn::ModuleList layers;
    torch::nn::ModuleDict heads{nullptr};
    NetImpl() {
      layers = register_module("layers", torch::nn::ModuleList(nn::Linear(4, 4), nn::Linear(4, 4)));
      heads = register_module("heads", torch::nn::ModuleDict(std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>{
                                           {"cls", nn::Linear(4, 2).ptr()}}));
    }
    torch::Tensor forward(torch::Tensor x) {
      for (const auto& l : *layers) x = l->as<nn::Linear>()->forward(x);
      return heads["cls"]->as<nn::Linear>()->forward(x);
    }
  };
  torch::manual_seed(0);
  auto net = std::make_shared<NetImpl>();
  net->eval();
  const auto x = torch::randn({3, 4});
  const auto base = net->forward(x);
  peft::inject_adapter_in_model(peft::LoraConfig().init_lora_weights(false).target_modules(peft::TargetModules::regex(".*(layers\\.1|cls)")), net);
  const auto keys = net->named_parameters().keys();
  EXPECT_TRUE(std::find(keys.begin(), keys.end(), "layers.1.lora_A.default.weight") != keys.end());
  EXPECT_TRUE(std::find(keys.begin(), keys.end(), "heads.cls.lora_B.default.weight") != keys.end());
  EXPECT_TRUE(std::find(keys.begin(), keys.end(), "layers.0.lora_A.default.weight") == keys.end());
  EXPECT_FALSE(torch::allclose(net->forward(x), base));
}

TEST(Inject, LibTorchOwnModulesRouteToo) {
  // TransformerEncoderLayer calls its linear1 from inside LibTorch: only libpeft_interpose can reach it.
  torch::manual_seed(0);
  torch::nn::TransformerEncoderLayer layer(torch::nn::TransformerEncoderLayerOptions(8, 2).dropout(0.0));
  layer->eval();
  const auto x = torch::randn({3, 2, 8});
  const auto base = layer->forward(x);
  const auto config = peft::LoraConfig().init_lora_weights(false).target_modules({"linear1"});
  EXPECT_EQ(peft::routes_torch_layers(), nn::kRouted);
  if (nn::kRouted) {
    peft::inject_adapter_in_model(config, layer);
    EXPECT_FALSE(torch::allclose(layer->forward(x), base));
    return;
  }
  // Without it, injection refuses (nothing would reach the adapter) and says what to do.
  const ModelSnapshot before(*layer);
  try {
    peft::inject_adapter_in_model(config, layer);
    ADD_FAILURE() << "injected although no call can reach the adapter";
  } catch (const peft::RoutingError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("libpeft_interpose"), std::string::npos) << message;
    EXPECT_NE(message.find("peft::Linear"), std::string::npos) << message;
  }
  EXPECT_TRUE(ModelSnapshot(*layer) == before);
  EXPECT_TRUE(torch::equal(layer->forward(x), base));
}

at::Tensor global_generator_state() { return at::detail::getDefaultCPUGenerator().get_state(); }

struct ThreeKindsImpl : torch::nn::Module {
  ThreeKindsImpl() {
    register_module("emb", nn::Embedding(10, 8));
    register_module("conv", nn::Conv2d(torch::nn::Conv2dOptions(2, 4, 3)));
    register_module("fc", nn::Linear(8, 8));
  }
};
TORCH_MODULE(ThreeKinds);

// Seed, build, inject: where the global generator stands for the program's next draw.
at::Tensor generator_after_seeded_injection() {
  torch::manual_seed(0);
  ThreeKinds model;
  peft::inject_adapter_in_model(peft::LoraConfig().r(2).target_modules({"emb", "conv", "fc"}), model);
  return global_generator_state();
}

// As in Python PEFT, injection draws the adapters' init from the global generator and nothing else. The first
// injection of a process also checks, once per layer kind, that calls reach adapters (with small probe layers whose
// constructors draw): it must leave the generator where every later injection does. Each test runs in a fresh
// process (a "threadsafe" death test starts the binary again), where nothing has been probed yet.
TEST(Inject, FirstInjectionOfAProcessDrawsOnlyTheAdapterInit) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        const at::Tensor first = generator_after_seeded_injection();
        const at::Tensor later = generator_after_seeded_injection();
        std::exit(torch::equal(first, later) ? 0 : 1);
      },
      testing::ExitedWithCode(0), "");
}

TEST(Inject, RoutesTorchLayersDrawsNothing) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        torch::manual_seed(0);
        const at::Tensor before = global_generator_state();
        peft::routes_torch_layers();
        std::exit(torch::equal(before, global_generator_state()) ? 0 : 1);
      },
      testing::ExitedWithCode(0), "");
}

TEST(Inject, RefusesTheOutputProjectionOfMultiheadAttention) {
  // LibTorch's attention reads out_proj's weight directly: an adapter (or a saved copy) there would do nothing.
  torch::nn::TransformerEncoderLayer layer(torch::nn::TransformerEncoderLayerOptions(8, 2).dropout(0.0));
  const ModelSnapshot before(*layer);
  for (const auto& config : {peft::LoraConfig().target_modules({"out_proj"}),
                             peft::LoraConfig().target_modules({"linear1"}).modules_to_save(std::vector<std::string>{"out_proj"})}) {
    try {
      peft::inject_adapter_in_model(config, layer);
      ADD_FAILURE() << "an adapter on self_attn.out_proj was accepted";
    } catch (const peft::UnsupportedLayerError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("'self_attn.out_proj'"), std::string::npos) << message;
      EXPECT_NE(message.find("MultiheadAttention"), std::string::npos) << message;
    }
    EXPECT_TRUE(ModelSnapshot(*layer) == before);
  }
  // Other layers named out_proj are ordinary targets.
  auto net = torch::nn::Sequential();
  net->push_back("out_proj", nn::Linear(4, 4));
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"out_proj"}), net);
  EXPECT_EQ(peft::get_peft_model_state_dict(net).size(), 2u);
}

TEST(Inject, ForwardThroughAnAdapterThatWasNeverLoadedNamesIt) {
  auto model = mlp();
  const auto x = torch::randn({2, 10});
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin1"}), model, "late", /*low_cpu_mem_usage=*/true);
  try {
    model->forward(x);
    ADD_FAILURE() << "a forward through meta tensors succeeded";
  } catch (const peft::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("'late'"), std::string::npos) << message;
    EXPECT_NE(message.find("'lin1'"), std::string::npos) << message;
    EXPECT_NE(message.find("low_cpu_mem_usage"), std::string::npos) << message;
  }
  // Loaded, it runs.
  peft::StateDict weights;
  for (const auto& item : peft::get_peft_model_state_dict(model, "late")) weights.insert(item.key(), torch::randn(item.value().sizes()));
  peft::set_peft_model_state_dict(model, weights, "late", /*low_cpu_mem_usage=*/true);
  EXPECT_NO_THROW(model->forward(x));
}

TEST(Inject, ErrorsCarryPythonPeftTexts) {
  {
    auto model = mlp();
    EXPECT_EQ(error_of<peft::NoMatchingPeftModuleError>([&] { peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"foo"}), model); }),
              expected_error("target_modules_not_found"));
    EXPECT_EQ(error_of<peft::NoMatchingPeftModuleError>([&] { peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"in0"}), model); }),
              expected_error("target_suffix_must_follow_dot"));
    EXPECT_EQ(error_of<peft::ConfigError>([&] { peft::inject_adapter_in_model(peft::LoraConfig(), model); }),
              expected_error("target_modules_None_custom_model"));
    EXPECT_EQ(error_of<peft::NoMatchingPeftModuleError>([&] {
                peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}).exclude_modules({"lin0"}), model);
              }),
              expected_error("all_excluded"));
    EXPECT_EQ(error_of<peft::ConfigError>([&] { peft::inject_adapter_in_model(peft::LoraConfig().r(0).target_modules({"lin0"}), model); }),
              expected_error("r_zero"));
    EXPECT_EQ(error_of<peft::ConfigError>([&] {
                peft::inject_adapter_in_model(peft::LoraConfig().use_dora(true).lora_bias(true).target_modules({"lin0"}), model);
              }),
              expected_error("dora_and_lora_bias"));
    EXPECT_EQ(error_of<peft::ConfigError>([&] {
                peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}).layers_pattern({{"blocks"}}), model);
              }),
              expected_error("layers_pattern_without_layers_to_transform"));
    EXPECT_EQ(error_of<peft::ConfigError>([&] {
                peft::inject_adapter_in_model(peft::LoraConfig().target_modules(peft::TargetModules::regex(".*lin0")).layers_to_transform({0}), model);
              }),
              expected_error("regex_target_with_layers_to_transform"));
  }
  {
    // Python names the layer type; ours names LibTorch's.
    auto model = mlp();
    const std::string message = error_of<peft::UnsupportedLayerError>(
        [&] { peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"relu", "lin0"}), model); });
    EXPECT_EQ(message.rfind("Target module torch::nn::ReLU() is not supported. Currently, only the following modules are supported: `torch::nn::Linear`", 0), 0u) << message;
  }
  {
    // Python: "layers_to_transform_toplevel_modulelist" -- blocks.0.fc1 has no "." before "blocks".
    torch::manual_seed(0);
    VectorModel top(VectorCase::load("ln_tuning_blocks").model);
    EXPECT_EQ(error_of<peft::NoMatchingPeftModuleError>([&] {
                peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"fc1"}).layers_to_transform({0}).layers_pattern({{"blocks"}}), top);
              }),
              expected_error("layers_to_transform_toplevel_modulelist"));
    VectorModel nested(VectorCase::load("lora_blocks_layers_to_transform").model);
    peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"fc1"}).layers_to_transform({0}).layers_pattern({{"blocks"}}), nested);
    std::vector<std::string> adapted;
    for (const auto& p : nested->named_parameters()) {
      if (p.key().find("lora_A") != std::string::npos) adapted.push_back(p.key());
    }
    EXPECT_EQ(adapted, std::vector<std::string>({"encoder.blocks.0.fc1.lora_A.default.weight"}));
  }
}

TEST(Inject, UnusedExcludeModulesWarns) {
  auto model = mlp();
  WarningCapture warnings;
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}).exclude_modules({"nothing"}), model);
  const std::string expected = errors()["exclude_modules_unused_warning"]["warnings"][0].get<std::string>();
  EXPECT_TRUE(warnings.contains(expected.substr(std::string("UserWarning: ").size()))) << warnings.messages.size();
}

TEST(Inject, FailedInjectionLeavesModelUntouched) {
  auto model = mlp();
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin1"}), model);
  const ModelSnapshot before(*model);
  // Fails after lin0 was prepared (relu is unsupported): nothing may have been attached.
  EXPECT_THROW(peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0", "relu"}), model, "b"), peft::UnsupportedLayerError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  EXPECT_THROW(peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}), model, "default"), peft::AdapterNameError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  EXPECT_THROW(peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"zzz"}), model, "c"), peft::NoMatchingPeftModuleError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  EXPECT_THROW(peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}).init_lora_weights("orthogonal").r(3), model, "d"), peft::ConfigError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(Inject, SecondAdapterBecomesActiveAndOldOneFreezes) {
  auto model = mlp();
  model->eval();
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0", "lin1"}).init_lora_weights(false), model);
  WarningCapture warnings;
  peft::inject_adapter_in_model(peft::LoraConfig().r(6).target_modules({"lin1", "lin2"}).init_lora_weights(false), model, "other");
  const std::string expected = errors()["duplicate_adapter_name"]["warnings"][0].get<std::string>();
  EXPECT_TRUE(warnings.contains(expected.substr(std::string("UserWarning: ").size())));
  const auto p = model->named_parameters();
  EXPECT_FALSE(p["lin0.lora_A.default.weight"].requires_grad());
  EXPECT_TRUE(p["lin1.lora_A.other.weight"].requires_grad());
  EXPECT_EQ(p["lin1.lora_A.other.weight"].size(0), 6);
  // Only "other" contributes now: zeroing other's B brings back the base output on lin1/lin2's path.
  const auto x = torch::randn({2, 10});
  torch::NoGradGuard no_grad;
  const auto with_other = model->forward(x);
  p["lin1.lora_B.other.weight"].zero_();
  p["lin2.lora_B.other.weight"].zero_();
  const auto without = model->forward(x);
  EXPECT_FALSE(torch::allclose(with_other, without));
  p["lin0.lora_B.default.weight"].mul_(100);  // inactive: no effect
  EXPECT_TRUE(torch::equal(model->forward(x), without));
}

TEST(Inject, OnlyAdapterParametersTrain) {
  auto model = mlp();
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0", "lin1"}).init_lora_weights(false), model);
  for (const auto& p : model->named_parameters()) {
    EXPECT_EQ(p.value().requires_grad(), p.key().find(".lora_") != std::string::npos) << p.key();
  }
  // A few steps of regression change the adapter and nothing else.
  const ModelSnapshot before(*model);
  torch::optim::SGD opt(model->parameters(), 0.1);
  const auto x = torch::randn({16, 10}), y = torch::randn({16, 4});
  for (int i = 0; i < 3; ++i) {
    opt.zero_grad();
    torch::mse_loss(model->forward(x), y).backward();
    opt.step();
  }
  for (const auto& p : model->named_parameters()) {
    const bool changed = !torch::equal(p.value(), before.values.at(p.key()));
    EXPECT_EQ(changed, p.key().find(".lora_") != std::string::npos) << p.key();
  }
}

TEST(Inject, BiasModesAndInferenceMode) {
  {
    auto model = mlp();
    peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}).bias("all"), model);
    auto p = model->named_parameters();
    EXPECT_TRUE(p["lin0.bias"].requires_grad() && p["lin1.bias"].requires_grad() && p["lin2.bias"].requires_grad());
    EXPECT_FALSE(p["lin1.weight"].requires_grad());
  }
  {
    auto model = mlp();
    peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}).bias("lora_only"), model);
    auto p = model->named_parameters();
    EXPECT_TRUE(p["lin0.bias"].requires_grad());
    EXPECT_FALSE(p["lin1.bias"].requires_grad());
  }
  {
    auto model = mlp();
    peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"lin0"}).inference_mode(true), model);
    for (const auto& p : model->parameters()) EXPECT_FALSE(p.requires_grad());
  }
}

TEST(Inject, DropoutOnlyInTraining) {
  torch::manual_seed(0);
  torch::nn::Sequential model(nn::Linear(32, 32));
  peft::inject_adapter_in_model(peft::LoraConfig().init_lora_weights(false).lora_dropout(0.5).target_modules({"0"}), model);
  const auto x = torch::randn({4, 32});
  model->eval();
  EXPECT_TRUE(torch::equal(model->forward(x), model->forward(x)));
  model->train();
  EXPECT_FALSE(torch::equal(model->forward(x), model->forward(x)));
}

TEST(Inject, LowCpuMemUsageCreatesMetaTensors) {
  DummyModel model;
  peft::inject_adapter_in_model(peft::LoraConfig().r(8).target_modules({"linear"}), model, "default", /*low_cpu_mem_usage=*/true);
  auto p = model->named_parameters();
  EXPECT_TRUE(p["linear.lora_A.default.weight"].device().is_meta());
  EXPECT_TRUE(p["linear.lora_B.default.weight"].device().is_meta());
  EXPECT_FALSE(p["linear.weight"].device().is_meta());
  // Loading adopts the given tensors without copying them.
  peft::StateDict sd;
  sd.insert("linear.lora_A.weight", torch::randn({8, 10}));
  sd.insert("linear.lora_B.weight", torch::randn({10, 8}));
  peft::set_peft_model_state_dict(*model, sd, "default", /*low_cpu_mem_usage=*/true);
  p = model->named_parameters();
  EXPECT_EQ(p["linear.lora_A.default.weight"].data_ptr(), sd["linear.lora_A.weight"].data_ptr());
  EXPECT_TRUE(p["linear.lora_A.default.weight"].requires_grad());
  EXPECT_FALSE(sd["linear.lora_A.weight"].requires_grad());  // the caller's tensor is not modified
  EXPECT_NO_THROW(model->forward(kIds()));
}

TEST(Inject, FromStateDictLikePython) {
  const VectorCase c = VectorCase::load("lora_llama_state_dict_injection");
  const nlohmann::json variants = c.json("state_dict_injection.json");
  const peft::StateDict sd = c.tensors("peft_state_dict.safetensors");
  const at::Tensor x = c.input(), expected = c.tensor("output.safetensors");
  struct Variant {
    std::string key;
    peft::TargetModules targets;
  };
  const std::vector<Variant> cases{{"target_modules_empty_list", peft::TargetModules(std::vector<std::string>{})},
                                   {"target_modules_same_as_training", peft::TargetModules({"q_proj", "v_proj", "down_proj"})},
                                   {"target_modules_mismatch", peft::TargetModules({"q_proj", "lm_head"})}};
  for (const auto& v : cases) {
    for (bool low_cpu : {false, true}) {
      const nlohmann::json& ref = variants[v.key + "|low_cpu_mem_usage=" + (low_cpu ? "True" : "False")];
      VectorModel model(c.model);
      model->load_base(c.tensors("base.safetensors"));
      model->eval();
      WarningCapture warnings;
      peft::inject_adapter_in_model(peft::LoraConfig().r(4).lora_alpha(8).target_modules(v.targets), model, "default", low_cpu, sd);
      for (const auto& w : ref["warnings"]) {
        const std::string text = w.get<std::string>().substr(std::string("RuntimeWarning: ").size());
        EXPECT_TRUE(warnings.contains(text)) << v.key << ": " << text;
      }
      EXPECT_EQ(warnings.messages.size(), ref["warnings"].size()) << v.key;
      std::vector<std::string> adapted;
      for (const auto& m : model->named_modules()) {
        if (m.key().size() > 7 && m.key().compare(m.key().size() - 7, 7, ".lora_A") == 0) adapted.push_back(m.key().substr(0, m.key().size() - 7));
      }
      std::sort(adapted.begin(), adapted.end());
      EXPECT_EQ(adapted, ref["targeted_modules"].get<std::vector<std::string>>()) << v.key;
      const auto result = peft::set_peft_model_state_dict(*model, sd, "default", low_cpu);
      EXPECT_TRUE(result.missing_keys.empty() && result.unexpected_keys.empty());
      EXPECT_LT(max_abs_diff(model->forward(x), expected), 1e-5) << v.key;
    }
  }
}

TEST(Inject, FromStateDictWithoutTargetModulesAsTheGuideSays) {
  // The guide lets target_modules stay unset when a state_dict is given (Python's code raises instead).
  const VectorCase c = VectorCase::load("lora_llama_state_dict_injection");
  VectorModel model(c.model);
  model->load_base(c.tensors("base.safetensors"));
  model->eval();
  const peft::StateDict saved = c.tensors("adapter_model.safetensors");  // keys with "base_model.model."
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).lora_alpha(8), model, "default", false, saved);
  peft::set_peft_model_state_dict(*model, saved);
  EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output.safetensors")), 1e-5);
  // The adapted layers become the config's targets.
  const auto sd = peft::get_peft_model_state_dict(*model);
  EXPECT_EQ(sd.size(), saved.size());
}

TEST(Inject, FromStateDictWithWrongRankSaysSo) {
  const VectorCase c = VectorCase::load("lora_llama_state_dict_injection");
  VectorModel model(c.model);
  const peft::StateDict sd = c.tensors("peft_state_dict.safetensors");  // trained with r=4
  const ModelSnapshot before(*model);
  const std::string message = error_of<peft::StateDictError>(
      [&] { peft::inject_adapter_in_model(peft::LoraConfig().r(8), model, "default", false, sd); });
  EXPECT_NE(message.find("model.layers.0.self_attn.q_proj.lora_A.weight has shape [4, 16], the config gives [8, 16]"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("rank_pattern"), std::string::npos);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

// The parameter-target cases against Python are in tests/methods/lora_target_parameters.cpp.
TEST(Inject, TargetParametersAdaptTheParameterItself) {
  torch::manual_seed(0);
  torch::nn::Sequential model(nn::Linear(6, 5));
  const auto x = torch::randn({3, 6});
  torch::NoGradGuard no_grad;
  const at::Tensor plain = model->forward(x);
  peft::inject_adapter_in_model(
      peft::LoraConfig().r(2).target_parameters({{"0.weight"}}).init_lora_weights(false).inference_mode(true), model);
  EXPECT_EQ(peft::adapter_names(model), std::vector<std::string>{"default"});
  // The weight holds W + s B A; the layer computes with it.
  auto params = model->named_parameters();
  const at::Tensor delta = (8.0 / 2.0) * torch::matmul(params["0.lora_B.default.weight"], params["0.lora_A.default.weight"]);
  EXPECT_TRUE(torch::allclose(model->forward(x), torch::linear(x, params["0.weight"], params["0.bias"]), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(peft::get_base_model_state_dict(model)["0.weight"] + delta, params["0.weight"], 1e-6, 1e-6));
  EXPECT_GT((model->forward(x) - plain).abs().max().item<double>(), 1e-4);
  EXPECT_EQ(peft::get_peft_model_state_dict(model).size(), 2u);  // 0.lora_A.weight, 0.lora_B.weight
}

TEST(Inject, CustomLayerWarnsAndFixesFanInFanOut) {
  torch::manual_seed(0);
  VectorModel model(VectorCase::load("lora_fan_in_fan_out").model);
  WarningCapture warnings;
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"c_fc"}), model);
  EXPECT_TRUE(warnings.contains("Setting fan_in_fan_out to True"));
}


}  // namespace
}  // namespace peft_test::inject_test
