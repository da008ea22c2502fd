// HiRA beyond its vector (hira_mlp, two Linears): the shared variant checks (Linear, "gaussian", dropout,
// Conv2d), the update W0 ⊙ (B A) written out for every layer type, Python's merge (scaled by the weight
// from before the first merge, undone by restoring it), Python's use of rank_pattern, its initialisations,
// GPT-2's Conv1D and the layers it refuses.

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::hira_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    Hira, MethodVariants,
    testing::Values(Variant{"hira", false,
                            {{"peft_type", "HIRA"}, {"target_modules", {"lin0", "lin1"}}, {"r", 4}, {"init_weights", false}}},
                    Variant{"hira_gaussian_dropout", false,
                            {{"peft_type", "HIRA"}, {"target_modules", {"lin0", "lin1"}}, {"r", 2},
                             {"init_weights", "gaussian"}, {"hira_dropout", 0.1}}},
                    Variant{"hira_conv", true,
                            {{"peft_type", "HIRA"}, {"target_modules", {"conv", "point"}}, {"r", 3}, {"init_weights", false}}}),
    VariantName());

// Every layer type HiRA adapts: x (2, 5) -> lin (5 -> 6); ids -> emb (10 x 6); conv1/conv2/conv3.
struct LayersImpl : torch::nn::Module {
  nn::Linear lin{nullptr};
  nn::Embedding emb{nullptr};
  nn::Conv1d conv1{nullptr};
  nn::Conv2d conv2{nullptr};
  nn::Conv3d conv3{nullptr};
  LayersImpl() {
    lin = register_module("lin", nn::Linear(5, 6));
    emb = register_module("emb", nn::Embedding(10, 6));
    conv1 = register_module("conv1", nn::Conv1d(torch::nn::Conv1dOptions(3, 4, 3).padding(1)));
    conv2 = register_module("conv2", nn::Conv2d(torch::nn::Conv2dOptions(3, 4, {3, 2}).stride(2)));
    conv3 = register_module("conv3", nn::Conv3d(torch::nn::Conv3dOptions(2, 4, {1, 1, 2})));
  }
};
TORCH_MODULE(Layers);

Layers make_layers() {
  torch::manual_seed(0);
  Layers model;
  model->eval();
  return model;
}

at::Tensor state(const torch::nn::Module& model, const std::string& key) {
  const peft::StateDict dict = peft::get_peft_model_state_dict(model);
  const at::Tensor* found = dict.find(key);
  EXPECT_TRUE(found) << key;
  return found ? *found : at::Tensor();
}

const std::vector<std::string> kAll{"lin", "emb", "conv1", "conv2", "conv3"};

/// Each layer's weights: before injection, and W0 + W0 ⊙ (B A) from its saved A and B.
std::map<std::string, at::Tensor> updated_weights(const LayersImpl& model, const std::map<std::string, at::Tensor>& original) {
  std::map<std::string, at::Tensor> out;
  for (const std::string& name : kAll) {
    const bool embedding = name == "emb";
    const at::Tensor a = state(model, name + (embedding ? ".hira_embedding_A" : ".hira_A"));
    const at::Tensor b = state(model, name + (embedding ? ".hira_embedding_B" : ".hira_B"));
    const at::Tensor w0 = original.at(name);
    // sum over r of B[o, r] A[r, i, ...], written with einsum over the flattened kernel.
    at::Tensor product = torch::einsum("or,ri->oi", {b.flatten(1), a.flatten(1)});
    product = embedding ? product.t() : product.view(w0.sizes());
    out[name] = w0 + w0 * product;
  }
  return out;
}

std::map<std::string, at::Tensor> weights_of(const LayersImpl& model) {
  return {{"lin", model.lin->weight.detach().clone()},
          {"emb", model.emb->weight.detach().clone()},
          {"conv1", model.conv1->weight.detach().clone()},
          {"conv2", model.conv2->weight.detach().clone()},
          {"conv3", model.conv3->weight.detach().clone()}};
}

struct Inputs {
  at::Tensor x = torch::randn({2, 5}), ids = torch::tensor({{1, 4, 9}, {0, 4, 2}}), seq = torch::randn({2, 3, 7}),
             image = torch::randn({2, 3, 7, 6}), volume = torch::randn({1, 2, 3, 4, 5});
};

/// Each layer's output through the functional forms with the given weights.
std::map<std::string, at::Tensor> reference(const LayersImpl& model, const std::map<std::string, at::Tensor>& w, const Inputs& in) {
  namespace F = torch::nn::functional;
  return {{"lin", F::linear(in.x, w.at("lin"), model.lin->bias)},
          {"emb", F::embedding(in.ids, w.at("emb"))},
          {"conv1", F::conv1d(in.seq, w.at("conv1"), F::Conv1dFuncOptions().bias(model.conv1->bias).padding(1))},
          {"conv2", F::conv2d(in.image, w.at("conv2"), F::Conv2dFuncOptions().bias(model.conv2->bias).stride(2))},
          {"conv3", F::conv3d(in.volume, w.at("conv3"), F::Conv3dFuncOptions().bias(model.conv3->bias))}};
}

std::map<std::string, at::Tensor> outputs(Layers& model, const Inputs& in) {
  return {{"lin", model->lin->forward(in.x)},
          {"emb", model->emb->forward(in.ids)},
          {"conv1", model->conv1->forward(in.seq)},
          {"conv2", model->conv2->forward(in.image)},
          {"conv3", model->conv3->forward(in.volume)}};
}

void expect_outputs(Layers& model, const std::map<std::string, at::Tensor>& weights, const Inputs& in, const std::string& what) {
  const auto expected = reference(*model, weights, in);
  const auto ours = outputs(model, in);
  for (const std::string& name : kAll) EXPECT_LT(max_abs_diff(ours.at(name), expected.at(name)), 1e-5) << what << " " << name;
}

TEST(Hira, EveryLayerTypeAddsTheHadamardUpdate) {
  WarningCapture warnings;
  auto model = make_layers();
  const auto original = weights_of(*model);
  peft::inject_adapter_in_model(peft::HiraConfig().r(2).init_weights(false).target_modules(kAll), model);
  EXPECT_EQ(state(*model, "conv2.hira_A").sizes(), (std::vector<int64_t>{2, 3, 3, 2}));
  EXPECT_EQ(state(*model, "conv2.hira_B").sizes(), (std::vector<int64_t>{4, 2, 1, 1}));
  EXPECT_EQ(state(*model, "emb.hira_embedding_A").sizes(), (std::vector<int64_t>{2, 10}));
  EXPECT_EQ(state(*model, "emb.hira_embedding_B").sizes(), (std::vector<int64_t>{6, 2}));
  const auto updated = updated_weights(*model, original);
  const Inputs in;
  expect_outputs(model, updated, in, "adapted");
  peft::merge_adapter(*model);
  for (const std::string& name : kAll) {
    EXPECT_LT(max_abs_diff(weights_of(*model).at(name), updated.at(name)), 1e-6) << name;
  }
  expect_outputs(model, updated, in, "merged");
  peft::unmerge_adapter(*model);
  for (const std::string& name : kAll) EXPECT_TRUE(torch::equal(weights_of(*model).at(name), original.at(name))) << name;
}

TEST(Hira, MergesScaleByTheWeightBeforeTheFirstMergeAndUnmergeRestoresIt) {
  WarningCapture warnings;
  auto model = make_layers();
  const at::Tensor w0 = model->lin->weight.detach().clone();
  auto config = peft::HiraConfig().r(2).init_weights(false).target_modules({"lin"});
  peft::inject_adapter_in_model(config, model, "one");
  peft::inject_adapter_in_model(config, model, "two");
  auto product = [&](const std::string& adapter) {
    const peft::StateDict dict = peft::get_peft_model_state_dict(*model, adapter);
    return torch::matmul(*dict.find("lin.hira_B"), *dict.find("lin.hira_A"));
  };
  peft::merge_adapter(*model, {"one"});
  EXPECT_LT(max_abs_diff(model->lin->weight, w0 + w0 * product("one")), 1e-6);
  // Python's second merge scales by W0 again, not by the merged weight.
  peft::merge_adapter(*model, {"two"});
  EXPECT_LT(max_abs_diff(model->lin->weight, w0 + w0 * product("one") + w0 * product("two")), 1e-6);
  peft::unmerge_adapter(*model);
  EXPECT_TRUE(torch::equal(model->lin->weight, w0));
  // Nothing is merged any more: merging again starts from W0.
  peft::merge_adapter(*model, {"two"});
  EXPECT_LT(max_abs_diff(model->lin->weight, w0 + w0 * product("two")), 1e-6);
}

TEST(Hira, RankPatternReachesOnlyLayersThatAlreadyCarryHira) {
  WarningCapture warnings;
  auto model = make_layers();
  auto config = peft::HiraConfig().r(4).rank_pattern({{"lin", 2}}).target_modules({"lin", "conv1"});
  peft::inject_adapter_in_model(config, model);
  // Python makes a new HiRA layer with r: the pattern is not used.
  EXPECT_EQ(state(*model, "lin.hira_A").size(0), 4);
  peft::inject_adapter_in_model(config, model, "second");
  const peft::StateDict second = peft::get_peft_model_state_dict(*model, "second");
  EXPECT_EQ(second.find("lin.hira_A")->size(0), 2);
  EXPECT_EQ(second.find("conv1.hira_A")->size(0), 4);
}

TEST(Hira, Initialisations) {
  WarningCapture warnings;
  const Inputs in;
  auto model = make_layers();
  const auto base = outputs(model, in);
  peft::inject_adapter_in_model(peft::HiraConfig().r(2).target_modules(kAll), model);
  const auto adapted = outputs(model, in);
  for (const std::string& name : kAll) EXPECT_TRUE(torch::equal(adapted.at(name), base.at(name))) << name;
  // Linear and Conv: B zeros; Embedding: A zeros, B standard normal.
  EXPECT_EQ(state(*model, "lin.hira_B").abs().max().item<double>(), 0.0);
  EXPECT_GT(state(*model, "lin.hira_A").abs().max().item<double>(), 0.0);
  EXPECT_EQ(state(*model, "conv2.hira_B").abs().max().item<double>(), 0.0);
  EXPECT_EQ(state(*model, "emb.hira_embedding_A").abs().max().item<double>(), 0.0);
  EXPECT_GT(state(*model, "emb.hira_embedding_B").abs().max().item<double>(), 0.0);
  // "gaussian": A ~ N(0, 1/r^2) on Linear layers; Python compares in lower case.
  auto gaussian = make_layers();
  peft::inject_adapter_in_model(peft::HiraConfig().r(50).init_weights("Gaussian").target_modules({"lin"}), gaussian);
  const double std = state(*gaussian, "lin.hira_A").std().item<double>();
  EXPECT_NEAR(std, 1.0 / 50, 0.004);
  EXPECT_EQ(state(*gaussian, "lin.hira_B").abs().max().item<double>(), 0.0);
  try {
    peft::config_from_json_string(R"({"peft_type": "HIRA", "init_weights": "xavier"})");
    ADD_FAILURE() << "init_weights xavier accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("Unknown initialization init_weights='xavier'"), std::string::npos) << e.what();
  }
  try {
    peft::config_from_json_string(R"({"peft_type": "HIRA", "init_weights": null})");
    ADD_FAILURE() << "init_weights null accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("init_weights null"), std::string::npos) << e.what();
  }
  EXPECT_THROW(peft::config_from_json_string(R"({"peft_type": "HIRA", "r": 0})"), peft::ConfigError);
  EXPECT_THROW(peft::config_from_json_string(R"({"peft_type": "HIRA", "rank_pattern": {"lin": 0}})"), peft::ConfigError);
  EXPECT_EQ(json::parse(peft::config_from_json_string(R"({"peft_type": "HIRA", "init_weights": "gaussian"})")->to_json_string())
                ["init_weights"],
            "gaussian");
}

TEST(Hira, RefusesLayerNormsAndGroupedConvolutionsNamingThem) {
  WarningCapture warnings;
  Mlp mlp;
  const ModelSnapshot before(*mlp);
  try {
    peft::inject_adapter_in_model(peft::HiraConfig().target_modules({"norm"}), mlp);
    ADD_FAILURE() << "LayerNorm accepted";
  } catch (const peft::UnsupportedLayerError& e) {
    EXPECT_NE(std::string(e.what()).find("not supported"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("norm"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*mlp) == before);
  struct GroupedImpl : torch::nn::Module {
    GroupedImpl() { register_module("conv", nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).groups(2))); }
  };
  auto grouped = std::make_shared<GroupedImpl>();
  const ModelSnapshot grouped_before(*grouped);
  try {
    peft::inject_adapter_in_model(peft::HiraConfig().r(2).target_modules({"conv"}), grouped);
    ADD_FAILURE() << "grouped convolution accepted";
  } catch (const peft::UnsupportedLayerError& e) {
    EXPECT_NE(std::string(e.what()).find("HiRA does not support Conv2d layers with groups > 1 (got groups=2)"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("'conv'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*grouped) == grouped_before);
}

// The config keeps its fan_in_fan_out, as Python's (HiRA only warns).
TEST(Hira, Gpt2Conv1DMatchesTheLinearForm) {
  expect_conv1d_matches_linear_form(peft::HiraConfig().r(3).init_weights(false).target_modules({"lin"}),
                                    [](torch::nn::Module& conv_model) {
                                      const auto config = peft::adapter_config(conv_model, "default");
                                      EXPECT_EQ(json::parse(config->to_json_string())["fan_in_fan_out"], false);
                                    });
}

}  // namespace
}  // namespace peft_test::hira_test
