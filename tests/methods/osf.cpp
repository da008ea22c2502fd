// OSF beyond its cases (osf_mlp, osf_all_linear): the shared variant checks, the fresh split rebuilding the
// weight, how effective_rank / rank_pattern resolve per layer (and Python's error for a rank of 0), the
// gradient projection away from the frozen directions (also after a low_cpu_mem_usage load), merging several
// adapters and unmerging, unset target_modules, and the config fields.

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::osf_test {
namespace {

INSTANTIATE_TEST_SUITE_P(
    Osf, MethodVariants,
    testing::Values(Variant{"osf", false, {{"peft_type", "OSF"}, {"target_modules", {"lin0", "lin1"}}}},
                    Variant{"osf_fraction_pattern", false,
                            {{"peft_type", "OSF"},
                             {"target_modules", {"lin0", "lin1"}},
                             {"effective_rank", 0.75},
                             {"rank_pattern", {{"in1", 3}}}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Osf, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"OSF", "emb"}, UnsupportedLayer{"OSF", "conv1d"}),
                         UnsupportedLayerName());

// x (3, 12) -> lin (12 -> 8)
OneLinear make_model() { return seeded_one_linear(12, 8); }

const at::Tensor& input() {
  static const at::Tensor x = torch::randn({3, 12}, torch::Generator(at::detail::createCPUGenerator(5)));
  return x;
}

at::Tensor tensor_of(const peft::StateDict& state, const std::string& key) {
  const at::Tensor* t = state.find(key);
  EXPECT_TRUE(t) << key;
  return t ? *t : at::Tensor();
}

/// The number of trained singular directions OSF gives lin (8 x 12) for this config.
int64_t trained_rank(const peft::OsfConfig& config) {
  auto model = make_model();
  peft::inject_adapter_in_model(config, model);
  return tensor_of(peft::get_peft_model_state_dict(*model), "lin.osf_svd_params.S_low").size(0);
}

TEST(Osf, FreshSplitRebuildsTheWeight) {
  auto model = make_model();
  const at::Tensor base = model->forward(input());
  peft::inject_adapter_in_model(peft::OsfConfig().target_modules({"lin"}), model);
  EXPECT_LT(max_abs_diff(model->forward(input()), base), 1e-5);
  const peft::StateDict state = peft::get_peft_model_state_dict(*model);
  std::vector<std::string> keys = state.keys();
  EXPECT_EQ(keys, (std::vector<std::string>{"lin.osf_svd_params.S_low", "lin.osf_svd_params.U_low",
                                            "lin.osf_svd_params.V_low"}));
  // Default: half of min(8, 12) frozen, the other 4 directions trained.
  EXPECT_EQ(tensor_of(state, "lin.osf_svd_params.U_low").sizes(), at::IntArrayRef({8, 4}));
  EXPECT_EQ(tensor_of(state, "lin.osf_svd_params.V_low").sizes(), at::IntArrayRef({4, 12}));
  // The frozen part is a buffer of the layer, not part of the checkpoint.
  const auto buffers = model->named_buffers();
  ASSERT_TRUE(buffers.find("lin._osf_U_high.default"));
  EXPECT_EQ(buffers.find("lin._osf_S_high.default")->sizes(), at::IntArrayRef({4}));
  // The trained singular values are the smallest ones.
  const at::Tensor s = torch::linalg::svdvals(model->lin->weight.detach(), c10::nullopt);
  EXPECT_LT(max_abs_diff(tensor_of(state, "lin.osf_svd_params.S_low"), s.slice(0, 4)), 1e-5);
}

TEST(Osf, EffectiveRankResolvesLikePython) {
  WarningCapture warnings;
  EXPECT_EQ(trained_rank(peft::OsfConfig().target_modules({"lin"}).effective_rank(3)), 5);
  EXPECT_EQ(trained_rank(peft::OsfConfig().target_modules({"lin"}).effective_rank(0.25)), 6);  // int(8 * 0.25)
  EXPECT_EQ(trained_rank(peft::OsfConfig().target_modules({"lin"}).effective_rank(7.9)), 1);   // int(7.9)
  EXPECT_EQ(trained_rank(peft::OsfConfig().target_modules({"lin"}).effective_rank(1.0)), 0);   // all of it
  EXPECT_EQ(trained_rank(peft::OsfConfig().target_modules({"lin"}).effective_rank(1)), 7);     // one direction
  EXPECT_EQ(trained_rank(peft::OsfConfig().target_modules({"lin"}).effective_rank(100)), 0);   // clamped
  // rank_pattern keys are found anywhere in the name (re.search); the first that matches wins.
  const peft::PatternMap<peft::OsfRank> patterns{{"^in", 6}, {"in", 2}, {"lin", 5}};
  EXPECT_EQ(trained_rank(peft::OsfConfig().target_modules({"lin"}).effective_rank(3).rank_pattern(patterns)), 6);
  for (const peft::OsfRank& bad : {peft::OsfRank(0), peft::OsfRank(-0.5), peft::OsfRank(0.01)}) {
    auto model = make_model();
    const ModelSnapshot before(*model);
    try {
      peft::inject_adapter_in_model(peft::OsfConfig().target_modules({"lin"}).effective_rank(bad), model);
      ADD_FAILURE() << "a rank of 0 must be refused";
    } catch (const peft::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("`effective_rank` should be a positive integer value but the value passed is 0"),
                std::string::npos)
          << e.what();
    }
    EXPECT_TRUE(ModelSnapshot(*model) == before);
  }
}

/// The gradients of U_low and V_low have no component along the frozen U_high / V_high.
void expect_projected_gradients(OneLinear& model) {
  model->train();
  model->forward(input()).pow(2).sum().backward();
  const auto params = model->named_parameters();
  const auto buffers = model->named_buffers();
  const at::Tensor u_grad = params.find("lin.osf_svd_params.default.U_low")->grad();
  const at::Tensor v_grad = params.find("lin.osf_svd_params.default.V_low")->grad();
  const at::Tensor s_grad = params.find("lin.osf_svd_params.default.S_low")->grad();
  ASSERT_TRUE(u_grad.defined() && v_grad.defined() && s_grad.defined());
  EXPECT_GT(u_grad.abs().max().item<double>(), 1e-3);
  EXPECT_GT(v_grad.abs().max().item<double>(), 1e-3);
  const at::Tensor u_high = *buffers.find("lin._osf_U_high.default");
  const at::Tensor v_high = *buffers.find("lin._osf_V_high.default");
  EXPECT_LT(u_high.t().mm(u_grad).abs().max().item<double>(), 1e-5);
  EXPECT_LT(v_grad.mm(v_high.t()).abs().max().item<double>(), 1e-5);
  EXPECT_FALSE(model->lin->weight.grad().defined());
}

TEST(Osf, GradientsAreProjectedAwayFromTheFrozenDirections) {
  WarningCapture warnings;
  auto model = make_model();
  peft::inject_adapter_in_model(peft::OsfConfig().target_modules({"lin"}).effective_rank(3), model);
  expect_projected_gradients(model);

  // A low_cpu_mem_usage load puts new tensors in place of the empty ones: still projected.
  const peft::StateDict state = peft::get_peft_model_state_dict(*model);
  auto fresh = make_model();
  peft::inject_adapter_in_model(peft::OsfConfig().target_modules({"lin"}).effective_rank(3), fresh, "default",
                                /*low_cpu_mem_usage=*/true);
  peft::set_peft_model_state_dict(*fresh, state, "default", /*low_cpu_mem_usage=*/true);
  peft::set_adapter(*fresh, "default");
  expect_projected_gradients(fresh);
}

TEST(Osf, FirstActiveAdapterComputesMergeTakesTheLastAndUnmergeRestores) {
  WarningCapture warnings;
  auto model = make_model();
  const at::Tensor weight = model->lin->weight.detach().clone();
  peft::inject_adapter_in_model(peft::OsfConfig().target_modules({"lin"}), model);
  peft::inject_adapter_in_model(peft::OsfConfig().target_modules({"lin"}).effective_rank(2), model, "other");
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters()) {
      if (p.key().find("S_low") != std::string::npos) p.value().mul_(p.key().find("other") != std::string::npos ? 2.0 : 0.5);
    }
  }
  peft::set_adapter(*model, "default");
  const at::Tensor first = model->forward(input());
  peft::set_adapter(*model, "other");
  const at::Tensor second = model->forward(input());
  EXPECT_GT(max_abs_diff(first, second), 1e-3);
  peft::set_adapter(*model, {"default", "other"});
  EXPECT_LT(max_abs_diff(model->forward(input()), first), 1e-6);
  // Merging both writes each adapter's rebuilt weight in turn: the last one stays.
  peft::merge_adapter(*model, {"default", "other"});
  EXPECT_LT(max_abs_diff(model->forward(input()), second), 1e-5);
  peft::unmerge_adapter(*model);
  EXPECT_TRUE(torch::equal(model->lin->weight.detach(), weight));
  EXPECT_LT(max_abs_diff(model->forward(input()), first), 1e-6);
}

// x (3, 10) -> lin0 (10 -> 6) -> lin1 (6 -> 4)
struct TwoLinearImpl : torch::nn::Module {
  nn::Linear lin0{nullptr}, lin1{nullptr};
  TwoLinearImpl() {
    lin0 = register_module("lin0", nn::Linear(10, 6));
    lin1 = register_module("lin1", nn::Linear(6, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return lin1(lin0(x)); }
};
TORCH_MODULE(TwoLinear);

TEST(Osf, UnsetTargetModulesMeansEveryLinearLayer) {
  TwoLinear model;
  peft::inject_adapter_in_model(peft::OsfConfig(), model);
  EXPECT_EQ(peft::targeted_module_names(model), (std::vector<std::string>{"lin0", "lin1"}));
}

TEST(Osf, ConfigReadsAndWritesEveryPythonField) {
  const auto config = peft::config_from_json_string(
      R"({"peft_type": "OSF", "effective_rank": 1.0, "rank_pattern": {"a": 1, "b": 0.5, "c": 2.0},
          "init_weights": false, "target_svd_config": {"lin0.weight": 8}, "modules_to_save": ["head"],
          "target_modules": ["lin"]})");
  const auto& osf = dynamic_cast<const peft::OsfConfig&>(*config);
  ASSERT_TRUE(osf.effective_rank());
  EXPECT_TRUE(osf.effective_rank()->is_float());
  ASSERT_TRUE(osf.rank_pattern());
  EXPECT_FALSE(osf.rank_pattern()->at(0).second.is_float());
  EXPECT_TRUE(osf.rank_pattern()->at(2).second.is_float());
  EXPECT_EQ(osf.init_weights(), std::optional<bool>(false));
  const nlohmann::json written = nlohmann::json::parse(config->to_json_string());
  EXPECT_TRUE(written["effective_rank"].is_number_float());
  EXPECT_EQ(written["rank_pattern"].dump(), R"({"a":1,"b":0.5,"c":2.0})");
  EXPECT_EQ(written["target_svd_config"].dump(), R"({"lin0.weight":8})");
  EXPECT_EQ(written["init_weights"], false);
  EXPECT_FALSE(written.contains("layers_to_transform"));
  EXPECT_FALSE(written.contains("exclude_modules"));

  // Python's defaults: all null.
  const nlohmann::json defaults = nlohmann::json::parse(peft::OsfConfig().to_json_string());
  for (const char* key : {"effective_rank", "rank_pattern", "init_weights", "target_svd_config"}) {
    EXPECT_TRUE(defaults.contains(key) && defaults[key].is_null()) << key;
  }
  EXPECT_EQ(nlohmann::json::parse(peft::OsfConfig().effective_rank(4).to_json_string())["effective_rank"].dump(), "4");

  for (const char* bad : {R"({"peft_type": "OSF", "effective_rank": "half"})",
                          R"({"peft_type": "OSF", "rank_pattern": {"lin": "x"}})",
                          R"({"peft_type": "OSF", "rank_pattern": [1]})",
                          R"({"peft_type": "OSF", "layers_to_transform": [0]})",
                          R"({"peft_type": "OSF", "exclude_modules": ["lin"]})"}) {
    EXPECT_THROW(peft::config_from_json_string(bad), peft::ConfigError) << bad;
  }
}

}  // namespace
}  // namespace peft_test::osf_test
