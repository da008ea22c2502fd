// PSOFT beyond its cases (psoft_mlp, psoft_cayley_neumann, psoft_lowrank): the shared variant checks, the
// identity start and the frozen factors, merging, fan_in_fan_out on Linear, a rank above the layer's, and
// PsoftConfig.__post_init__'s errors and warnings.

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::psoft_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    Psoft, MethodVariants,
    testing::Values(
        Variant{"psoft", false, {{"peft_type", "PSOFT"}, {"target_modules", {"lin0", "lin1"}}, {"r", 4}}},
        Variant{"psoft_free_pissa", false,
                {{"peft_type", "PSOFT"}, {"target_modules", {"lin0", "lin1"}}, {"r", 3}, {"psoft_orth", false},
                 {"ab_svd_init", "pissa_init"}, {"psoft_mag_a", false}, {"psoft_alpha", 6}}},
        Variant{"psoft_neumann", false,
                {{"peft_type", "PSOFT"}, {"target_modules", {"lin0", "lin1"}}, {"r", 5}, {"use_cayley_neumann", true},
                 {"num_cayley_neumann_terms", 4}, {"cayley_neumann_eps", 0.5}, {"psoft_dropout", 0.1}}},
        Variant{"psoft_lowrank", false,
                {{"peft_type", "PSOFT"}, {"target_modules", {"lin0", "lin1"}}, {"r", 4}, {"psoft_svd", "lowrank"},
                 {"psoft_svd_lowrank_niter", 3}, {"random_seed", 11}, {"init_weights", false}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Psoft, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"PSOFT", "emb", {{"r", 2}}},
                                         UnsupportedLayer{"PSOFT", "conv1d", {{"r", 2}}}),
                         UnsupportedLayerName());

// x (3, 12) -> lin (12 -> 8)
OneLinear make_model() { return seeded_one_linear(12, 8); }

const at::Tensor& input() {
  static const at::Tensor x = torch::randn({3, 12}, torch::Generator(at::detail::createCPUGenerator(5)));
  return x;
}

TEST(Psoft, StartsAsTheIdentityAndMergesAdditively) {
  WarningCapture warnings;
  auto model = make_model();
  const at::Tensor base = model->forward(input());
  peft::inject_adapter_in_model(peft::PsoftConfig().r(4).target_modules({"lin"}), model);
  EXPECT_LT(max_abs_diff(model->forward(input()), base), 1e-6);
  const peft::StateDict state = peft::get_peft_model_state_dict(*model);
  std::vector<std::string> keys = state.keys();
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"lin.psoft_R.vector_a", "lin.psoft_R.vector_b", "lin.psoft_R.weight"}));
  EXPECT_EQ(state.find("lin.psoft_R.weight")->sizes(), at::IntArrayRef({6}));
  // The frozen factors are float32 buffers of the layer, not part of the checkpoint.
  const auto buffers = model->named_buffers();
  ASSERT_TRUE(buffers.find("lin._psoft_A_cache.default"));
  EXPECT_EQ(buffers.find("lin._psoft_A_cache.default")->sizes(), at::IntArrayRef({4, 12}));
  EXPECT_EQ(buffers.find("lin._psoft_B_cache.default")->sizes(), at::IntArrayRef({8, 4}));
  // psoft_init: A's rows are orthonormal.
  const at::Tensor a = *buffers.find("lin._psoft_A_cache.default");
  EXPECT_LT(max_abs_diff(a.mm(a.t()), torch::eye(4)), 1e-5);

  // A non-trivial R: merging adds its update, unmerging takes it away again.
  {
    torch::NoGradGuard no_grad;
    const auto params = model->named_parameters();
    params.find("lin.psoft_R.default.weight")->copy_(torch::tensor({0.3, -0.2, 0.5, 0.1, 0.7, -0.4}));
  }
  const at::Tensor adapted = model->forward(input());
  EXPECT_GT(max_abs_diff(adapted, base), 1e-3);
  const at::Tensor merged_before = model->lin->weight.detach().clone();
  peft::merge_adapter(*model);
  const at::Tensor delta = model->lin->weight.detach() - merged_before;
  EXPECT_GT(delta.abs().max().item<double>(), 1e-3);
  EXPECT_LT(max_abs_diff(model->forward(input()), adapted), 1e-5);
  peft::unmerge_adapter(*model);
  EXPECT_LT(max_abs_diff(model->lin->weight.detach(), merged_before), 1e-6);
}

TEST(Psoft, FanInFanOutIsResetForLinear) {
  WarningCapture warnings;
  auto model = make_model();
  peft::PsoftConfig config;
  config.r(2).fan_in_fan_out(true).target_modules({"lin"});
  peft::inject_adapter_in_model(config, model);
  EXPECT_TRUE(warnings.contains("fan_in_fan_out=True is not compatible with `torch.nn.Linear`. Setting fan_in_fan_out=False."));
  const std::string dir = (std::filesystem::temp_directory_path() / ("peft_psoft_" + std::to_string(::getpid()))).string();
  peft::save_adapter(*model, dir);
  const auto saved = peft::config_from_json_string(
      [&] {
        std::ifstream in(dir + "/adapter_config.json");
        return std::string(std::istreambuf_iterator<char>(in), {});
      }());
  EXPECT_FALSE(dynamic_cast<const peft::PsoftConfig&>(*saved).fan_in_fan_out());
  std::filesystem::remove_all(dir);
}

TEST(Psoft, RankAboveTheLayersIsRefusedByName) {
  auto model = make_model();
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(peft::PsoftConfig().r(9).target_modules({"lin"}), model);
    ADD_FAILURE() << "r = 9 > min(8, 12) must be refused";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'lin'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

void expect_error(const json& config, const std::string& message) {
  json full = config;
  full["peft_type"] = "PSOFT";
  try {
    peft::config_from_json_string(full.dump());
    ADD_FAILURE() << "accepted " << full.dump();
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
}

TEST(Psoft, ConfigChecksAsPythonDoes) {
  expect_error({{"r", 0}}, "`r` must be a positive integer; got 0.");
  expect_error({{"ab_svd_init", "olora"}}, "`ab_svd_init` must be one of ['pissa_init', 'psoft_init']; got 'olora'.");
  expect_error({{"psoft_svd", "randomized"}}, "`psoft_svd` must be one of ['full', 'lowrank']; got 'randomized'.");
  expect_error({{"use_cayley_neumann", true}, {"num_cayley_neumann_terms", 0}},
               "`num_cayley_neumann_terms` must be a positive integer; got 0.");
  expect_error({{"use_cayley_neumann", true}, {"cayley_neumann_eps", 1.5}},
               "`cayley_neumann_eps` must be in (0, 1) when set; got 1.5.");
  expect_error({{"psoft_dropout", 1.5}}, "psoft_dropout");
  {
    WarningCapture warnings;
    peft::config_from_json_string(R"({"peft_type": "PSOFT", "psoft_svd_lowrank_niter": 3})");
    EXPECT_TRUE(warnings.contains("`psoft_svd_lowrank_niter` is only used when `psoft_svd='lowrank'`. Got "
                                  "psoft_svd='full', so psoft_svd_lowrank_niter=3 will be ignored."));
  }
  {
    WarningCapture warnings;
    peft::config_from_json_string(R"({"peft_type": "PSOFT", "num_cayley_neumann_terms": 7, "cayley_neumann_eps": 0.5})");
    EXPECT_TRUE(warnings.contains("`num_cayley_neumann_terms=7` will be ignored."));
    EXPECT_TRUE(warnings.contains("`cayley_neumann_eps=0.5` will be ignored."));
  }
  // Every field of Python's config is written back.
  const auto config = peft::config_from_json_string(
      R"({"peft_type": "PSOFT", "r": 5, "psoft_alpha": 10, "random_seed": 3, "use_cayley_neumann": true,
          "cayley_neumann_eps": 0.25, "layers_to_transform": [1], "layers_pattern": ["blocks"]})");
  const json written = json::parse(config->to_json_string());
  for (const char* key : {"r", "psoft_alpha", "psoft_dropout", "fan_in_fan_out", "ab_svd_init", "psoft_svd",
                          "psoft_svd_lowrank_niter", "random_seed", "psoft_orth", "psoft_mag_b", "psoft_mag_a",
                          "use_cayley_neumann", "num_cayley_neumann_terms", "cayley_neumann_eps", "init_weights",
                          "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save"}) {
    EXPECT_TRUE(written.contains(key)) << key;
  }
  EXPECT_EQ(written["psoft_alpha"].dump(), "10");
  EXPECT_EQ(written["cayley_neumann_eps"].dump(), "0.25");
  EXPECT_TRUE(json::parse(peft::PsoftConfig().to_json_string())["cayley_neumann_eps"].is_null());
}

}  // namespace
}  // namespace peft_test::psoft_test
