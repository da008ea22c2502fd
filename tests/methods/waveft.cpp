// WaveFT beyond its vector (waveft_mlp, db1): the shared variant checks, the update of every wavelet family
// against Python's, the families Python's config accepts but cannot transform, use_idwt=false,
// proportional_parameters, GPT-2's Conv1D and half precision.

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::waveft_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    WaveFT, MethodVariants,
    testing::Values(
        Variant{"waveft_db2", false,
                {{"peft_type", "WAVEFT"}, {"target_modules", {"lin0", "lin1"}}, {"n_frequency", 40},
                 {"wavelet_family", "db2"}, {"scaling", 10.0}}},
        Variant{"waveft_sym3_pattern", false,
                {{"peft_type", "WAVEFT"}, {"target_modules", {"lin0", "lin1"}}, {"n_frequency", 30},
                 {"wavelet_family", "sym3"}, {"n_frequency_pattern", {{"lin1", 50}}}, {"init_weights", false}}},
        Variant{"waveft_coif1_proportional", false,
                {{"peft_type", "WAVEFT"}, {"target_modules", {"lin0", "lin1"}}, {"n_frequency", 20},
                 {"wavelet_family", "coif1"}, {"proportional_parameters", true}}},
        Variant{"waveft_no_idwt", false,
                {{"peft_type", "WAVEFT"}, {"target_modules", {"lin0", "lin1"}}, {"n_frequency", 25}, {"use_idwt", false},
                 {"wavelet_family", "db30"}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(WaveFT, UnsupportedLayers, testing::Values(UnsupportedLayer{"WAVEFT", "emb"}),
                         UnsupportedLayerName());

/// Python's reference: delta = get_delta_weight() for a WaveFTConfig(n_frequency=n, random_loc_seed=5,
/// scaling=3.0, wavelet_family=family) on nn.Linear(in, out) with spectrum sin(1..n), summarised as
/// sum(delta), sum(delta^2) and sum(delta * w), w = (1..out*in).view(out, in) / (out*in).
struct FamilyCase {
  const char* family;
  int64_t out, in, n;
  double sum, sum_of_squares, weighted_sum;
};

/// The update WaveFT adds to lin's weight, from the merge.
at::Tensor delta_of(const json& config_json, int64_t out, int64_t in) {
  torch::manual_seed(0);
  OneLinear model(in, out);
  const at::Tensor weight = model->lin->weight.detach().clone();
  json j = config_json;
  j["peft_type"] = "WAVEFT";
  j["target_modules"] = {"lin"};
  peft::inject_adapter_in_model(*peft::config_from_json_string(j.dump()), model);
  const int64_t n = j["n_frequency"];
  peft::StateDict spectrum;
  spectrum.insert("lin.waveft_spectrum", torch::sin(torch::arange(1, n + 1, torch::kDouble)).to(torch::kFloat));
  peft::set_peft_model_state_dict(model, spectrum);
  peft::merge_and_unload(model);
  return (model->lin->weight.detach() - weight).to(torch::kDouble);
}

void expect_summary(const at::Tensor& delta, double sum, double sum_of_squares, double weighted_sum, const std::string& what) {
  const int64_t out = delta.size(0), in = delta.size(1);
  const at::Tensor w = torch::arange(1, out * in + 1, torch::kDouble).view({out, in}) / static_cast<double>(out * in);
  auto near = [](double ours, double theirs) { return std::abs(ours - theirs) <= 2e-5 * std::max(1.0, std::abs(theirs)); };
  EXPECT_TRUE(near(delta.sum().item<double>(), sum)) << what << ": sum " << delta.sum().item<double>() << " vs " << sum;
  EXPECT_TRUE(near((delta * delta).sum().item<double>(), sum_of_squares))
      << what << ": sum of squares " << (delta * delta).sum().item<double>() << " vs " << sum_of_squares;
  EXPECT_TRUE(near((delta * w).sum().item<double>(), weighted_sum))
      << what << ": weighted sum " << (delta * w).sum().item<double>() << " vs " << weighted_sum;
}

TEST(WaveFT, EveryWaveletFamilyMatchesPython) {
  WarningCapture warnings;
  const FamilyCase cases[] = {
      {"db1", 21, 15, 60, 12.10929277, 251.8613486, 3.796087819},
      {"db1", 40, 30, 100, -2.850629408, 452.4154248, -5.573765692},
      {"db2", 21, 15, 60, 7.285985358, 229.1049234, 2.767830518},
      {"db2", 40, 30, 100, -2.543517752, 399.3658581, -5.356036928},
      {"db3", 21, 15, 60, 7.460681388, 203.0195159, 1.378215243},
      {"db3", 40, 30, 100, 0.2934573476, 356.5152312, -1.624959457},
      {"db4", 21, 15, 60, 6.623073324, 175.5885865, 1.366137363},
      {"db4", 40, 30, 100, 1.391911211, 332.7017145, -1.725415418},
      {"db5", 21, 15, 60, 6.416293017, 146.1850236, 2.311759306},
      {"db5", 40, 30, 100, 3.238458611, 310.5683673, 0.4969712764},
      {"db6", 21, 15, 60, 6.810347455, 124.3085502, 2.412480005},
      {"db6", 40, 30, 100, 4.474392725, 291.585388, 1.873296133},
      {"db7", 21, 15, 60, 4.734133238, 107.6434143, 0.4813802438},
      {"db7", 40, 30, 100, 8.787318645, 276.0854922, 5.276383591},
      {"db8", 21, 15, 60, 4.60520416, 94.12044843, 0.8844065353},
      {"db8", 40, 30, 100, 8.409888419, 252.2637478, 5.872271122},
      {"db9", 21, 15, 60, 3.056707267, 87.53235429, -0.3924346551},
      {"db9", 40, 30, 100, 8.194238186, 227.7054063, 5.687839998},
      {"db10", 21, 15, 60, 1.913291391, 81.48400898, -0.9459746078},
      {"db10", 40, 30, 100, 9.325598072, 221.518444, 6.720419707},
      {"sym2", 21, 15, 60, 7.285985358, 229.1049234, 2.767830518},
      {"sym2", 40, 30, 100, -2.543517752, 399.3658581, -5.356036928},
      {"sym3", 21, 15, 60, 7.460681388, 203.0195159, 1.378215243},
      {"sym3", 40, 30, 100, 0.2934573476, 356.5152312, -1.624959457},
      {"sym4", 21, 15, 60, 0.3391751805, 176.156739, 0.1600105616},
      {"sym4", 40, 30, 100, 14.92414364, 339.8674524, 13.06539173},
      {"sym5", 21, 15, 60, 1.744791878, 142.7738352, 0.2956282256},
      {"sym5", 40, 30, 100, 15.40585473, 296.5092747, 13.60055846},
      {"sym6", 21, 15, 60, 3.898628981, 117.2239419, 1.969622157},
      {"sym6", 40, 30, 100, 14.53626221, 283.9135645, 12.51572725},
      {"sym7", 21, 15, 60, 3.14245646, 91.85796165, 4.014025493},
      {"sym7", 40, 30, 100, 14.85711128, 270.3984134, 12.789652},
      {"sym8", 21, 15, 60, 4.196017382, 80.27669018, 3.19045414},
      {"sym8", 40, 30, 100, 8.695346415, 264.6157255, 7.150972173},
      {"sym9", 21, 15, 60, 5.270516506, 48.25185636, 4.629137626},
      {"sym9", 40, 30, 100, 5.233371091, 248.2278965, 4.926714277},
      {"sym10", 21, 15, 60, 5.069626451, 36.55626043, 4.43326456},
      {"sym10", 40, 30, 100, 4.617471424, 228.6978206, 5.692740533},
      {"coif1", 21, 15, 60, 5.142743025, 200.3510644, 0.8621269424},
      {"coif1", 40, 30, 100, 8.863907603, 354.1661881, 6.974132622},
      {"coif2", 21, 15, 60, -0.649929711, 123.5123731, -0.5687241386},
      {"coif2", 40, 30, 100, 14.85564715, 288.0685878, 12.35222838},
      {"coif3", 21, 15, 60, 4.052232033, 57.67665681, 3.505737581},
      {"coif3", 40, 30, 100, 17.79240279, 248.2055986, 14.52950642},
      {"coif4", 21, 15, 60, 4.627613358, 27.49651222, 3.304942327},
      {"coif4", 40, 30, 100, 8.307279934, 194.6473751, 7.124711002},
  };
  for (const FamilyCase& c : cases) {
    const at::Tensor delta = delta_of({{"n_frequency", c.n}, {"random_loc_seed", 5}, {"scaling", 3.0}, {"wavelet_family", c.family}},
                                      c.out, c.in);
    expect_summary(delta, c.sum, c.sum_of_squares, c.weighted_sum,
                   std::string(c.family) + " " + std::to_string(c.out) + "x" + std::to_string(c.in));
  }
}

TEST(WaveFT, WithoutIdwtTheCoefficientsAreTheEntries) {
  WarningCapture warnings;
  const at::Tensor delta = delta_of(
      {{"n_frequency", 60}, {"random_loc_seed", 5}, {"scaling", 3.0}, {"wavelet_family", "db3"}, {"use_idwt", false}}, 21, 15);
  EXPECT_EQ((delta != 0).sum().item<int64_t>(), 60);
  expect_summary(delta, 4.903586216, 269.5792803, -5.815282844, "use_idwt=false");  // Python's values
}

TEST(WaveFT, FamiliesWithoutFiltersAreRefusedWithTheTransform) {
  WarningCapture warnings;
  // Not a family Python's config knows: its message.
  try {
    peft::config_from_json_string(R"({"peft_type": "WAVEFT", "wavelet_family": "haar"})");
    ADD_FAILURE() << "haar accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("Wavelet family haar not supported. Supported wavelet families are: ['db1', 'db2', "),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("'coif16', 'coif17']"), std::string::npos) << e.what();
  }
  // Known to the config, without filter coefficients: refused when injecting, the model unchanged.
  torch::manual_seed(0);
  OneLinear model(6, 8);
  const ModelSnapshot before(*model);
  auto config = peft::WaveFTConfig().n_frequency(10).wavelet_family("db11").target_modules({"lin"});
  try {
    peft::inject_adapter_in_model(config, model);
    ADD_FAILURE() << "db11 with use_idwt accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("Unknown wavelet name 'db11'. Available wavelets: ['db1', "), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  // coif5: Python's table has 48 coefficients where its reduction (28) assumes 30, so its reconstruction
  // comes out smaller than the layer (a (4, 0) update for a 21 x 15 layer) and its forward fails: refused.
  try {
    peft::inject_adapter_in_model(peft::WaveFTConfig().n_frequency(10).wavelet_family("coif5").target_modules({"lin"}), model);
    ADD_FAILURE() << "coif5 with use_idwt accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("coif5"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  // Without the transform the family is not used, as in Python.
  peft::inject_adapter_in_model(config.use_idwt(false).init_weights(false), model);
  EXPECT_EQ(peft::targeted_module_names(model), std::vector<std::string>{"lin"});
}

// Layers of in * out 200, 400 and 80 (Python's example), and 5 and 15.
struct ThreeLayersImpl : torch::nn::Module {
  nn::Linear lin0{nullptr}, lin1{nullptr}, lin2{nullptr};
  ThreeLayersImpl() {
    lin0 = register_module("lin0", nn::Linear(10, 20));
    lin1 = register_module("lin1", nn::Linear(20, 20));
    lin2 = register_module("lin2", nn::Linear(20, 4));
  }
};
TORCH_MODULE(ThreeLayers);

std::vector<int64_t> spectrum_sizes(const torch::nn::Module& model) {
  std::vector<int64_t> sizes;
  for (const auto& item : peft::get_peft_model_state_dict(model)) sizes.push_back(item.value().numel());
  return sizes;
}

TEST(WaveFT, ProportionalParametersShareTheBudgetAsPythonDoes) {
  WarningCapture warnings;
  const auto targets = std::vector<std::string>{"lin0", "lin1", "lin2"};
  ThreeLayers model;
  peft::inject_adapter_in_model(
      peft::WaveFTConfig().n_frequency(10).proportional_parameters(true).n_frequency_pattern({{"lin0", 1}}).target_modules(targets),
      model);
  EXPECT_EQ(spectrum_sizes(*model), (std::vector<int64_t>{9, 18, 4}));  // Python's; the pattern is not used
  ThreeLayers small;
  peft::inject_adapter_in_model(peft::WaveFTConfig().n_frequency(3).proportional_parameters(true).target_modules(targets), small);
  EXPECT_EQ(spectrum_sizes(*small), (std::vector<int64_t>{3, 5, 1}));
  // 5 / 20 * 10 = 2.5: Python's round() gives 2 (halves to even).
  struct TwoImpl : torch::nn::Module {
    TwoImpl() {
      register_module("a", nn::Linear(1, 5));
      register_module("b", nn::Linear(3, 5));
    }
  };
  auto two = std::make_shared<TwoImpl>();
  peft::inject_adapter_in_model(peft::WaveFTConfig().n_frequency(5).proportional_parameters(true).target_modules({"a", "b"}), two);
  EXPECT_EQ(spectrum_sizes(*two), (std::vector<int64_t>{2, 8}));
}

TEST(WaveFT, NFrequencyBeyondTheLayerIsRefused) {
  WarningCapture warnings;
  OneLinear model(3, 4);
  try {
    peft::inject_adapter_in_model(peft::WaveFTConfig().n_frequency(13).target_modules({"lin"}), model);
    ADD_FAILURE() << "n_frequency 13 accepted on a 4x3 layer";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("`n_frequency` should be less than or equal to the product of the input and output "
                                         "dimensions but the value passed is 13 and the product is 12"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(peft::config_from_json_string(R"({"peft_type": "WAVEFT", "n_frequency": 0})"), peft::ConfigError);
  EXPECT_THROW(peft::config_from_json_string(R"({"peft_type": "WAVEFT", "bias": "lora_only"})"), peft::ConfigError);
}

TEST(WaveFT, Gpt2Conv1DMatchesTheLinearForm) {
  expect_conv1d_matches_linear_form(
      peft::WaveFTConfig().n_frequency(16).wavelet_family("db2").init_weights(false).target_modules({"lin"}));
}

// bfloat16 layers: the coefficients take the layer's dtype and the transform runs (Python's CPU
// conv_transpose2d fails for bfloat16 in LibTorch 1.13; peft-cpp convolves in float32 and rounds back).
TEST(WaveFT, BFloat16LayersFollowTheFloat32Update) {
  WarningCapture warnings;
  const json config = {{"n_frequency", 40}, {"random_loc_seed", 5}, {"scaling", 3.0}, {"wavelet_family", "sym2"}};
  const at::Tensor reference = delta_of(config, 12, 10);
  torch::manual_seed(0);
  OneLinear model(10, 12);
  model->to(torch::kBFloat16);
  json j = config;
  j["peft_type"] = "WAVEFT";
  j["target_modules"] = {"lin"};
  peft::inject_adapter_in_model(*peft::config_from_json_string(j.dump()), model);
  const peft::StateDict state = peft::get_peft_model_state_dict(*model);
  EXPECT_EQ(state.find("lin.waveft_spectrum")->scalar_type(), torch::kBFloat16);
  peft::StateDict spectrum;
  spectrum.insert("lin.waveft_spectrum", torch::sin(torch::arange(1, 41, torch::kDouble)).to(torch::kBFloat16));
  peft::set_peft_model_state_dict(model, spectrum);
  const at::Tensor x = torch::eye(10).to(torch::kBFloat16);  // LibTorch has no bfloat16 eye
  at::Tensor base_output;
  {
    peft::DisabledAdapters off(*model);
    base_output = model->forward(x);
  }
  const at::Tensor output = model->forward(x);
  EXPECT_EQ(output.scalar_type(), torch::kBFloat16);
  // Rows of eye(in) @ (W + delta)^T: the delta's transpose, up to bfloat16 rounding.
  const at::Tensor delta = (output.to(torch::kDouble) - base_output.to(torch::kDouble)).t();
  EXPECT_LT(max_abs_diff(delta, reference), 0.05 * reference.abs().max().item<double>());
}

}  // namespace
}  // namespace peft_test::waveft_test
