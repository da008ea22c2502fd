// AdaMSS beyond its cases (adamss_mlp, adamss_nobias_random): the shared variant checks, the layers it refuses,
// AdamssConfig.__post_init__'s errors, and the Adaptive Subspace Allocation (peft::AdamssAsa) stepped like
// Python PEFT's AdamssModel.update_and_allocate (tests/data/methods/adamss/, made by its make_reference.py).

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include <peft/peft.h>
#include <peft/tuners/adamss/asa.h>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::adamss_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(
    Adamss, MethodVariants,
    testing::Values(
        Variant{"adamss_random_b", false,
                {{"peft_type", "ADAMSS"}, {"target_modules", {"lin0", "lin1"}}, {"r", 8}, {"num_subspaces", 3},
                 {"subspace_rank", 2}, {"init_weights", nullptr}}},
        Variant{"adamss_dynamic_rank", false,
                {{"peft_type", "ADAMSS"}, {"target_modules", {"lin0", "lin1"}}, {"r", 6}, {"num_subspaces", 4},
                 {"subspace_rank", 3}, {"use_dynamic_rank", true}, {"svd_threshold", 0.2}, {"random_seed", 5},
                 {"init_weights", false}}}),
    VariantName());

INSTANTIATE_TEST_SUITE_P(Adamss, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"ADAMSS", "emb"}, UnsupportedLayer{"ADAMSS", "conv1d"}),
                         UnsupportedLayerName());

TEST(Adamss, ConfigErrors) {
  const json base = {{"peft_type", "ADAMSS"}, {"target_modules", {"lin0"}}};
  auto with = [&](const json& extra) {
    json j = base;
    j.update(extra);
    return config_error(j);
  };
  EXPECT_NE(with({{"init_weights", "gaussian"}}).find("init_weights must be 'orthogonal' or None, got gaussian"),
            std::string::npos);
  EXPECT_EQ(with({{"init_weights", false}}), "");
  EXPECT_EQ(with({{"use_asa", true}, {"mask_interval", 0}}),
            "`mask_interval` must be a positive integer when `use_asa=True`, got 0.");
  EXPECT_EQ(with({{"use_asa", true}, {"init_warmup", 10}, {"final_warmup", 10}}),
            "`init_warmup` must be smaller than `final_warmup` when `use_asa=True` so that ASA has a non-empty "
            "pruning ramp, got init_warmup=10 and final_warmup=10.");
  EXPECT_EQ(with({{"use_asa", true}, {"asa_target_subspaces", 0}}),
            "`asa_target_subspaces` must be a positive integer when `use_asa=True`, got 0.");
  EXPECT_EQ(with({{"use_asa", true}, {"asa_schedule_exponent", -1.0}}),
            "`asa_schedule_exponent` must be a positive number when `use_asa=True`, got -1.0.");
  // Without use_asa the schedule values are not checked, as in Python.
  EXPECT_EQ(with({{"mask_interval", 0}, {"init_warmup", 10}, {"final_warmup", 1}}), "");
  EXPECT_NE(with({{"num_subspaces", 0}}).find("n_clusters"), std::string::npos);
  EXPECT_NE(with({{"r", 0}}), "");
  EXPECT_NE(with({{"exclude_modules", {"lin1"}}}), "");
}

// Python's init_weights="orthogonal": every B_i starts at zero, so the adapter starts as a no-op; the A_i are
// row-orthonormal and the subspaces cover each output row once.
TEST(Adamss, OrthogonalInitIsANoOpWithOrthonormalA) {
  WarningCapture warnings;
  torch::manual_seed(0);
  Mlp model;
  model->eval();
  const at::Tensor x = torch::randn({3, 16});
  const at::Tensor before = model->forward(x);
  peft::AdamssConfig config;
  config.r(6).num_subspaces(4).subspace_rank(2).target_modules({"lin0", "lin1"});
  peft::inject_adapter_in_model(config, model);
  EXPECT_TRUE(torch::equal(model->forward(x), before));
  const peft::StateDict state = peft::get_peft_model_state_dict(*model);
  int64_t rows = 0;
  for (const auto& item : state) {
    const std::string& key = item.key();
    if (key.rfind("lin0.adamss_B.", 0) == 0) {
      EXPECT_EQ(item.value().abs().max().item<float>(), 0.0f) << key;
      rows += item.value().size(0);
    }
    if (key.rfind("lin0.adamss_A.", 0) == 0) {
      const at::Tensor a = item.value();
      EXPECT_LT((a.matmul(a.t()) - torch::eye(a.size(0))).abs().max().item<float>(), 1e-5) << key;
    }
  }
  EXPECT_EQ(rows, 24);
  EXPECT_EQ(state["lin0.adamss_newB"].sizes(), (std::vector<int64_t>{6, 17}));
}

TEST(Adamss, AsaNeedsUseAsa) {
  WarningCapture warnings;
  torch::manual_seed(0);
  Mlp model;
  peft::AdamssConfig config;
  config.r(4).num_subspaces(2).target_modules({"lin0"});
  peft::inject_adapter_in_model(config, model);
  EXPECT_THROW(peft::AdamssAsa asa(*model), peft::ConfigError);
}

// Python's schedule (_schedule_threshold) for the adamss_nobias_random adapter: 8 subspaces, target 5, warmup
// 2 .. 9, exponent 2: int(5 + 3 * (1 - (step - 2) / 7)^2).
TEST(Adamss, AsaSchedule) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("adamss_nobias_random");
  VectorModel model = base_model(c);
  peft::LoadAdapterOptions options;
  options.is_trainable = true;
  peft::load_adapter(*model, c.dir.string(), "default", options);
  peft::AdamssAsa asa(*model);
  EXPECT_EQ(asa.total_subspaces(), 8);
  EXPECT_EQ(asa.schedule(1), std::nullopt);
  EXPECT_EQ(asa.schedule(2), 8);
  EXPECT_EQ(asa.schedule(3), 7);
  EXPECT_EQ(asa.schedule(6), 5);
  EXPECT_EQ(asa.schedule(9), 5);
  EXPECT_EQ(asa.schedule(100), 5);
}

// Twelve training steps with ASA, against Python PEFT's run of the same steps: which tensors stay trainable
// after each step, and the adapter at the end.
TEST(Adamss, AsaMatchesPython) {
  WarningCapture warnings;
  const fs::path dir = vectors_dir().parent_path() / "methods" / "adamss";
  json reference;
  {
    std::ifstream in(dir / "reference.json");
    reference = json::parse(in);
  }
  const double lr = reference.at("lr").get<double>();
  const VectorCase c = VectorCase::load("adamss_nobias_random");
  VectorModel model = base_model(c);
  peft::LoadAdapterOptions options;
  options.is_trainable = true;
  peft::load_adapter(*model, c.dir.string(), "default", options);
  peft::AdamssAsa asa(*model);
  const at::Tensor x = c.input();
  for (const json& expected : reference.at("steps")) {
    const int64_t step = expected.at("step").get<int64_t>();
    const at::Tensor y = model->forward(x);
    const at::Tensor w = torch::linspace(-1, 1, y.numel()).view_as(y);
    (y * w).sum().backward();
    {
      torch::NoGradGuard no_grad;
      for (at::Tensor& p : model->parameters()) {
        if (p.grad().defined()) p -= lr * p.grad();
      }
    }
    asa.update_and_allocate(step);
    std::vector<std::string> trainable;
    for (const auto& item : model->named_parameters()) {
      if (item.value().requires_grad()) trainable.push_back(item.key());
    }
    std::sort(trainable.begin(), trainable.end());
    EXPECT_EQ(trainable, expected.at("trainable").get<std::vector<std::string>>()) << "step " << step;
    for (at::Tensor& p : model->parameters()) p.mutable_grad() = at::Tensor();
  }
  const peft::StateDict ours = peft::get_peft_model_state_dict(*model);
  const peft::StateDict theirs = peft::safetensors::load_file((dir / "reference.safetensors").string());
  EXPECT_EQ(ours.size(), theirs.size());
  for (const auto& item : theirs) {
    const at::Tensor* t = ours.find(item.key());
    ASSERT_TRUE(t) << item.key();
    EXPECT_LT((*t - item.value()).abs().max().item<double>(), 1e-5) << item.key();
  }
}

}  // namespace
}  // namespace peft_test::adamss_test
