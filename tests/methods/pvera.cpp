// PVeRA: the variant suites, and what is special about it: pvera_A holds a mean and a log-variance half (2r rows),
// lambda_d too; eval mode adds the mean's update (which is what merging folds in), train mode (or
// sample_at_inference) the sampled one, with the noise from each layer's own generator seeded by generator_seed as
// Python's layers do, or from the default generator. What every shared-basis method must do (second adapters,
// checks across adapters, casts, layer selection, misshaped files, regenerated projections, offline merge) is in
// shared_basis_suite.cpp; the pvera_* cases (tests/data/cases) check the outputs against Python.

#include <ATen/CPUGeneratorImpl.h>

#include "methods/shared_tensor_checks.h"
#include "support/warnings.h"

namespace peft_test::pvera_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    Pvera, MethodVariants,
    testing::Values(Variant{"pvera", false,
                            {{"peft_type", "PVERA"}, {"target_modules", kMlpTargets}, {"r", 4}, {"init_weights", false}}},
                    Variant{"pvera_regenerated_projections", false,
                            {{"peft_type", "PVERA"},
                             {"target_modules", kMlpTargets},
                             {"r", 6},
                             {"save_projection", false},
                             {"projection_prng_key", 5},
                             {"d_initial", 0.2},
                             {"pvera_dropout", 0.1},
                             {"generator_seed", 3}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Pvera, UnsupportedLayers, testing::Values(UnsupportedLayer{"PVERA", "emb"}),
                         UnsupportedLayerName());

constexpr int64_t kRank = 3;

peft::PveraConfig one_linear_config() {
  return peft::PveraConfig().r(kRank).init_weights(false).target_modules({"lin"});
}

/// The adapted OneLinear (5 -> 6) with random lambdas.
OneLinear adapted_one_linear(const peft::PveraConfig& config) {
  OneLinear model = seeded_one_linear();
  torch::manual_seed(3);
  peft::inject_adapter_in_model(config, model);
  return model;
}

at::Tensor one_linear_input() { return torch::randn({4, 5}, torch::Generator(at::detail::createCPUGenerator(11))); }

/// The output of `layer` of `model` for `x`, computed from its tensors: mean + eps * std in the middle when `eps`
/// is given, the mean alone otherwise.
at::Tensor expected(const torch::nn::Module& model, const std::string& layer, const at::Tensor& x,
                    const std::optional<at::Tensor>& eps = std::nullopt) {
  torch::NoGradGuard no_grad;
  const at::Tensor weight = named_parameter(model, layer + ".weight");
  const at::Tensor bias = named_parameter(model, layer + ".bias");
  const at::Tensor a = named_buffer(model, layer + ".pvera_A.default");
  const at::Tensor b = named_buffer(model, layer + ".pvera_B.default");
  const at::Tensor lambda_b = named_parameter(model, layer + ".pvera_lambda_b.default");
  const at::Tensor lambda_d = named_parameter(model, layer + ".pvera_lambda_d.default");
  const int64_t r = lambda_d.size(0) / 2;
  const at::Tensor h = lambda_d * torch::matmul(x, a.narrow(1, 0, weight.size(1)).t());
  at::Tensor z = h.narrow(1, 0, r);
  if (eps) z = z + *eps * torch::exp(0.5 * h.narrow(1, r, r));
  return torch::addmm(bias, x, weight.t()) + lambda_b * torch::matmul(z, b.narrow(0, 0, weight.size(0)).t());
}

at::Tensor seeded_noise(int64_t seed, int64_t rows, int64_t draws = 1) {
  torch::Generator generator(at::detail::createCPUGenerator(static_cast<uint64_t>(seed)));
  at::Tensor eps;
  for (int64_t i = 0; i < draws; ++i) eps = torch::randn({rows, kRank}, generator);
  return eps;
}

TEST(Pvera, ProjectionsHoldAMeanAndALogVarianceHalfAndAreSharedAndSavedOnce) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(peft::PveraConfig().r(4).init_weights(false).target_modules({"lin0", "lin1"}), model);
  // Sized by the largest layer (lin0 is 16 -> 24, lin1 24 -> 16); A has 2r rows, lambda_d 2r entries.
  const at::Tensor a0 = named_buffer(*model, "lin0.pvera_A.default");
  EXPECT_TRUE(same_tensor(a0, named_buffer(*model, "lin1.pvera_A.default")));
  EXPECT_EQ(a0.sizes().vec(), (std::vector<int64_t>{8, 24}));
  EXPECT_EQ(named_buffer(*model, "lin1.pvera_B.default").sizes().vec(), (std::vector<int64_t>{24, 4}));
  EXPECT_EQ(named_parameter(*model, "lin1.pvera_lambda_d.default").sizes().vec(), (std::vector<int64_t>{8}));
  EXPECT_EQ(named_parameter(*model, "lin1.pvera_lambda_b.default").sizes().vec(), (std::vector<int64_t>{16}));
  EXPECT_FALSE(a0.requires_grad());
  EXPECT_EQ(peft::get_peft_model_state_dict(*model).keys(),
            (std::vector<std::string>{"lin0.pvera_lambda_b", "lin0.pvera_lambda_d", "lin1.pvera_lambda_b",
                                      "lin1.pvera_lambda_d", "base_model.pvera_A", "base_model.pvera_B"}));
}

TEST(Pvera, InitialisationFollowsPythonsSeed) {
  WarningCapture warnings;
  expect_python_initialisation("pvera_mlp");  // init_weights=false: lambda_d ~ randn (2r), the projections from key 0
}

TEST(Pvera, DefaultInitialisationStartsAsTheBaseLayer) {
  WarningCapture warnings;
  OneLinear model = adapted_one_linear(one_linear_config().init_weights(true).d_initial(0.3));
  EXPECT_TRUE(torch::equal(named_parameter(*model, "lin.pvera_lambda_b.default"), torch::zeros({6})));
  EXPECT_TRUE(torch::equal(named_parameter(*model, "lin.pvera_lambda_d.default"), torch::full({2 * kRank}, 0.3)));
}

TEST(Pvera, EvalModeAddsTheMeansUpdateWhichIsWhatMergingFoldsIn) {
  WarningCapture warnings;
  OneLinear model = adapted_one_linear(one_linear_config().generator_seed(7));
  const at::Tensor x = one_linear_input();
  torch::NoGradGuard no_grad;
  const at::Tensor first = model->forward(x);
  EXPECT_LT(max_abs_diff(first, expected(*model, "lin", x)), 1e-5);
  EXPECT_TRUE(torch::equal(model->forward(x), first));  // no noise: the same every time
  peft::merge_and_unload(model);
  EXPECT_LT(max_abs_diff(model->forward(x), first), 1e-5);
}

TEST(Pvera, TrainModeSamplesFromTheLayersSeededGenerator) {
  WarningCapture warnings;
  OneLinear model = adapted_one_linear(one_linear_config().generator_seed(7));
  const at::Tensor x = one_linear_input();
  model->train();
  const at::Tensor first = model->forward(x).detach();
  const at::Tensor second = model->forward(x).detach();
  // Each forward draws the next noise from the layer's generator, which started at the seed.
  EXPECT_LT(max_abs_diff(first, expected(*model, "lin", x, seeded_noise(7, 4))), 1e-5);
  EXPECT_LT(max_abs_diff(second, expected(*model, "lin", x, seeded_noise(7, 4, 2))), 1e-5);
  EXPECT_GT(max_abs_diff(first, second), 1e-4);
  EXPECT_GT(max_abs_diff(first, expected(*model, "lin", x)), 1e-4);
  // The same seed reproduces the draws, whatever the default generator does in between.
  torch::manual_seed(99);
  OneLinear again = adapted_one_linear(one_linear_config().generator_seed(7));
  again->train();
  EXPECT_TRUE(torch::equal(again->forward(x).detach(), first));
  // Gradients reach both halves of lambda_d through the sample.
  model->zero_grad();
  model->forward(x).sum().backward();
  const at::Tensor grad = named_parameter(*model, "lin.pvera_lambda_d.default").grad();
  ASSERT_TRUE(grad.defined());
  EXPECT_GT(grad.narrow(0, kRank, kRank).abs().sum().item<double>(), 0);
}

TEST(Pvera, EveryLayerStartsItsOwnGeneratorFromTheSeed) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(peft::PveraConfig().r(kRank).init_weights(false).generator_seed(5).target_modules(
                                    {"lin0", "lin1"}),
                                model);
  model->train();
  const at::Tensor x = mlp_input();
  const at::Tensor y = model->forward(x).detach();
  torch::NoGradGuard no_grad;
  const at::Tensor h = expected(*model, "lin0", x, seeded_noise(5, 3));
  const at::Tensor z = torch::relu(model->norm(h));
  EXPECT_LT(max_abs_diff(y, expected(*model, "lin1", z, seeded_noise(5, 3))), 1e-5);
}

TEST(Pvera, WithoutASeedTheDefaultGeneratorDraws) {
  WarningCapture warnings;
  OneLinear model = adapted_one_linear(one_linear_config());
  const at::Tensor x = one_linear_input();
  model->train();
  torch::manual_seed(21);
  const at::Tensor first = model->forward(x).detach();
  torch::manual_seed(21);
  const at::Tensor eps = torch::randn({4, kRank});
  EXPECT_LT(max_abs_diff(first, expected(*model, "lin", x, eps)), 1e-5);
  torch::manual_seed(21);
  EXPECT_TRUE(torch::equal(model->forward(x).detach(), first));
}

TEST(Pvera, SampleAtInferenceSamplesInEvalMode) {
  WarningCapture warnings;
  OneLinear model = adapted_one_linear(one_linear_config().sample_at_inference(true).generator_seed(7));
  const at::Tensor x = one_linear_input();
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(model->forward(x), expected(*model, "lin", x, seeded_noise(7, 4))), 1e-5);
}

TEST(Pvera, ConfigFieldsRoundTripAsPythonWritesThem) {
  WarningCapture warnings;
  const json defaults = json::parse(peft::PveraConfig().target_modules({"lin"}).to_json_string());
  EXPECT_TRUE(defaults.at("generator_seed").is_null());
  EXPECT_EQ(defaults.at("sample_at_inference"), false);
  EXPECT_EQ(defaults.at("r"), 256);
  EXPECT_EQ(defaults.count("exclude_modules"), 0u);
  const auto read = peft::config_from_json_string(
      peft::PveraConfig().target_modules({"lin"}).sample_at_inference(true).generator_seed(-1).to_json_string());
  const auto& config = dynamic_cast<const peft::PveraConfig&>(*read);
  EXPECT_TRUE(config.sample_at_inference());
  EXPECT_EQ(config.generator_seed(), std::optional<int64_t>(-1));
}

// Each adapter has its own projections (Python's second adapter would use the first one's, which fails in the
// forward when the ranks differ).
TEST(Pvera, AdaptersOfDifferentRanksEachUseTheirOwnProjections) {
  WarningCapture warnings;
  Mlp model = seeded_mlp();
  peft::inject_adapter_in_model(peft::PveraConfig().r(4).init_weights(false).target_modules({"lin0", "lin1"}), model);
  peft::inject_adapter_in_model(peft::PveraConfig().r(2).init_weights(false).target_modules({"lin1"}), model, "other");
  EXPECT_EQ(named_buffer(*model, "lin1.pvera_A.other").sizes().vec(), (std::vector<int64_t>{4, 24}));
  peft::set_adapter(model, "other");
  torch::NoGradGuard no_grad;
  EXPECT_EQ(model->forward(mlp_input()).sizes().vec(), (std::vector<int64_t>{3, 16}));
}

TEST(Pvera, NotSavingTheProjectionsWarnsAsPythonDoes) {
  WarningCapture saving;
  peft::PveraConfig().save_projection(false).target_modules({"lin"}).validate();
  EXPECT_TRUE(saving.contains("Specified to not save pvera_A and pvera_B within the state dictionary"));
}

}  // namespace
}  // namespace peft_test::pvera_test
