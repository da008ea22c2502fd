// RoAd beyond its vector (road_mlp, road_1): the shared variant checks for every variant, each variant's
// forward and merge against R built as Python's _get_delta_weight builds it, per-sample adapters (mixed
// batches), and Python's config and layer errors.

#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::road_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    Road, MethodVariants,
    testing::Values(
        Variant{"road_1", false,
                {{"peft_type", "ROAD"}, {"target_modules", {"lin0", "lin1"}}, {"variant", "road_1"}, {"group_size", 8},
                 {"init_weights", false}}},
        Variant{"road_2", false,
                {{"peft_type", "ROAD"}, {"target_modules", {"lin0", "lin1"}}, {"variant", "road_2"}, {"group_size", 4}}},
        Variant{"road_4", false,
                {{"peft_type", "ROAD"}, {"target_modules", {"lin0", "lin1"}}, {"variant", "road_4"}, {"group_size", 2},
                 {"init_weights", false}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Road, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"ROAD", "emb", {{"group_size", 2}}},
                                         UnsupportedLayer{"ROAD", "conv1d", {{"group_size", 2}}}),
                         UnsupportedLayerName());

/// Python's _prepare_cols followed by _get_delta_weight, step by step, in float64: the (out, out) matrix R.
at::Tensor python_road_matrix(const std::string& variant, int64_t g, at::Tensor theta, at::Tensor alpha) {
  theta = theta.to(torch::kDouble);
  alpha = alpha.to(torch::kDouble);
  at::Tensor first, second;
  if (variant == "road_1") {
    theta = theta.reshape({-1, g / 2}).repeat_interleave(2, 0).flatten();
    alpha = alpha.reshape({-1, g / 2}).repeat_interleave(2, 0).flatten();
    first = alpha * theta.cos();
    second = alpha * theta.sin();
  } else if (variant == "road_2") {
    first = alpha * theta.cos();
    second = alpha * theta.sin();
  } else {
    theta = theta.reshape({-1, 2, g});
    alpha = alpha.reshape({-1, 2, g});
    first = alpha.select(1, 0).flatten() * theta.select(1, 0).cos().flatten();
    second = alpha.select(1, 1).flatten() * theta.select(1, 1).sin().flatten();
  }
  const int64_t size = second.size(0);
  at::Tensor out = torch::diag(first);
  const at::Tensor swap = torch::tensor({1, 0});
  const at::Tensor swapped = second.reshape({-1, 2, g / 2}).index_select(1, swap).flatten();
  at::Tensor rotated = torch::diag(swapped).reshape({-1, 2, g / 2, size}).index_select(1, swap).clone();
  rotated.select(1, 0).mul_(-1);
  return out + rotated.reshape({size, size});
}

TEST(Road, EveryVariantMatchesPythonsRotationMatrix) {
  WarningCapture warnings;
  const int64_t in = 6, out = 12;
  for (const char* variant : {"road_1", "road_2", "road_4"}) {
    for (int64_t g : {2, 4, 6, 12}) {
      const std::string what = std::string(variant) + " group_size " + std::to_string(g);
      torch::manual_seed(4);
      OneLinear model(in, out);
      model->eval();
      const at::Tensor weight = model->lin->weight.detach().clone().to(torch::kDouble);
      const at::Tensor bias = model->lin->bias.detach().clone().to(torch::kDouble);
      peft::inject_adapter_in_model(
          peft::RoadConfig().variant(variant).group_size(g).init_weights(false).target_modules({"lin"}), model);
      const peft::StateDict sd = peft::get_peft_model_state_dict(model);
      const at::Tensor r = python_road_matrix(variant, g, sd["lin.road_theta"], sd["lin.road_alpha"]);
      const at::Tensor x = torch::randn({5, in});
      const at::Tensor expected = torch::matmul(x.to(torch::kDouble), torch::matmul(r, weight).t()) + torch::matmul(r, bias);
      EXPECT_LT(max_abs_diff(model->forward(x).to(torch::kDouble), expected), 1e-5) << what;
      peft::merge_adapter(model);
      EXPECT_LT(max_abs_diff(model->lin->weight.detach().to(torch::kDouble), torch::matmul(r, weight)), 1e-5) << what;
      EXPECT_LT(max_abs_diff(model->lin->bias.detach().to(torch::kDouble), torch::matmul(r, bias)), 1e-5) << what;
      peft::unmerge_adapter(model);
      EXPECT_LT(max_abs_diff(model->lin->weight.detach().to(torch::kDouble), weight), 1e-5) << what;
      EXPECT_LT(max_abs_diff(model->lin->bias.detach().to(torch::kDouble), bias), 1e-5) << what;
    }
  }
}

TEST(Road, ParameterSizesFollowTheVariant) {
  WarningCapture warnings;
  const std::pair<const char*, int64_t> sizes[] = {{"road_1", 6}, {"road_2", 12}, {"road_4", 24}};
  for (const auto& [variant, size] : sizes) {
    OneLinear model(5, 12);
    peft::inject_adapter_in_model(peft::RoadConfig().variant(variant).group_size(4).target_modules({"lin"}), model);
    const peft::StateDict sd = peft::get_peft_model_state_dict(model);
    EXPECT_EQ(sd["lin.road_theta"].sizes(), at::IntArrayRef({size})) << variant;
    EXPECT_EQ(sd["lin.road_alpha"].sizes(), at::IntArrayRef({size})) << variant;
    // Default init: angles zero, scales one, so the adapter starts as the identity.
    EXPECT_TRUE(torch::equal(sd["lin.road_theta"], torch::zeros({size}))) << variant;
    EXPECT_TRUE(torch::equal(sd["lin.road_alpha"], torch::ones({size}))) << variant;
  }
}

TEST(Road, MixedBatchUsesEachRowsAdapter) {
  WarningCapture warnings;
  torch::manual_seed(2);
  Mlp model;
  model->eval();
  const at::Tensor x = torch::randn({4, 16});
  const at::Tensor base = model->forward(x);
  peft::inject_adapter_in_model(
      peft::RoadConfig().variant("road_2").group_size(8).init_weights(false).target_modules({"lin0", "lin1"}), model, "a");
  peft::inject_adapter_in_model(
      peft::RoadConfig().variant("road_4").group_size(4).init_weights(false).target_modules({"lin1"}), model, "b");
  peft::set_adapter(model, "a");
  const at::Tensor out_a = model->forward(x);
  peft::set_adapter(model, "b");
  const at::Tensor out_b = model->forward(x);
  at::Tensor mixed;
  {
    peft::AdapterNamesPerSample per_sample(model, {"b", "a", "__base__", "a"});
    mixed = model->forward(x);
  }
  EXPECT_LT(max_abs_diff(mixed[0], out_b[0]), 1e-5);
  EXPECT_LT(max_abs_diff(mixed[1], out_a[1]), 1e-5);
  EXPECT_LT(max_abs_diff(mixed[2], base[2]), 1e-5);
  EXPECT_LT(max_abs_diff(mixed[3], out_a[3]), 1e-5);
  EXPECT_GT(max_abs_diff(out_a, out_b), 1e-3);

  // Python's checks: the batch size must match, and merged adapters refuse per-sample names.
  {
    peft::AdapterNamesPerSample per_sample(model, {"a", "b"});
    try {
      model->forward(x);
      ADD_FAILURE() << "a batch of 4 with 2 adapter names was accepted";
    } catch (const peft::ConfigError& e) {
      EXPECT_EQ(std::string(e.what()),
                "Length of `adapter_names` should be the same as the number of inputs, but got 2 and 4 respectively.");
    }
  }
  peft::merge_adapter(model);
  {
    peft::AdapterNamesPerSample per_sample(model, {"a", "b", "a", "b"});
    try {
      model->forward(x);
      ADD_FAILURE() << "per-sample adapters were accepted with merged adapters";
    } catch (const peft::ConfigError& e) {
      EXPECT_EQ(std::string(e.what()),
                "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first.");
    }
  }
  peft::unmerge_adapter(model);
  EXPECT_LT(max_abs_diff(model->forward(x), out_b), 1e-5);
}

TEST(Road, ConfigErrorsArePythons) {
  WarningCapture warnings;
  EXPECT_EQ(config_error({{"peft_type", "ROAD"}, {"variant", "road_3"}}),
            "Invalid variant road_3 specified. Please choose from road_1, road_2 or road_4");
  EXPECT_EQ(config_error({{"peft_type", "ROAD"}, {"group_size", 5}}),
            "The group_size must be divisible by 2 when using RoadLayer, but got 5.");
  EXPECT_EQ(config_error({{"peft_type", "ROAD"}, {"group_size", 0}}),
            "The group_size must be divisible by 2 when using RoadLayer, but got 0.");
  EXPECT_EQ(config_error({{"peft_type", "ROAD"}, {"group_size", 4}, {"variant", "road_4"}}), "");
  // Python's RoadConfig has no layers_to_transform / layers_pattern / exclude_modules.
  EXPECT_NE(config_error({{"peft_type", "ROAD"}, {"layers_to_transform", {0}}}), "");
}

TEST(Road, GroupSizeMustDivideOutFeatures) {
  WarningCapture warnings;
  Mlp model;  // lin0: 16 -> 24, lin1: 24 -> 16
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(peft::RoadConfig().group_size(16).target_modules({"lin0", "lin1"}), model);
    ADD_FAILURE() << "group_size 16 accepted for out_features 24";
  } catch (const peft::ConfigError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("The out_features of the base layer must be divisible by group_size (16) when using RoadLayer."),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("lin0"), std::string::npos) << message;
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

}  // namespace
}  // namespace peft_test::road_test
