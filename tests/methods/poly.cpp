// Poly beyond its cases (poly_mlp, poly_mhr_default_init, poly_blocks_exclude, which the generic parity suite runs
// with their task_ids.safetensors under a peft::TaskIds guard): Python's initialisation, the training-mode router
// (a RelaxedBernoulli sample), the task ids every forward needs, and Python's configuration errors.

#include <torch/torch.h>

#include <peft/peft.h>
#include <peft/tuners/poly/config.h>

#include "methods/shared_tensor_checks.h"
#include "support/errors.h"
#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::poly_test {
namespace {

using nlohmann::json;

INSTANTIATE_TEST_SUITE_P(Poly, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"POLY", "emb"}, UnsupportedLayer{"POLY", "conv1d"}),
                         UnsupportedLayerName());

at::Tensor case_task_ids(const VectorCase& c) { return c.tensor("task_ids.safetensors", "task_ids"); }

TEST(Poly, InitialisationFollowsPythonsSeed) {
  WarningCapture warnings;
  expect_python_initialisation("poly_mlp");  // A, B (init_weights=false) and the router's logits, in Python's order
}

TEST(Poly, TrainingModeSamplesTheRouterAsPython) {
  for (const char* name : {"poly_mlp", "poly_mhr_default_init", "poly_blocks_exclude"}) {
    const VectorCase c = VectorCase::load(name);
    WarningCapture warnings;
    VectorModel model = base_model(c);
    peft::LoadAdapterOptions trainable;
    trainable.is_trainable = true;
    peft::load_adapter(*model, c.dir.string(), "default", trainable);
    model->train();
    const peft::TaskIds tasks(*model, case_task_ids(c));
    torch::manual_seed(99);
    const at::Tensor y = model->forward(c.input());
    EXPECT_LT(max_abs_diff(y, c.tensor("output_train.safetensors")), 1e-5) << name;
    // The sample is differentiable: every tensor of the adapter gets a gradient.
    y.sum().backward();
    const auto params = model->named_parameters();
    for (const char* key : {"lin0.poly_lora_A.default", "lin0.poly_lora_B.default",
                            "lin0.poly_router.default.module_logits"}) {
      const at::Tensor* p = params.find(key);
      if (std::string(name) == "poly_blocks_exclude") break;
      ASSERT_TRUE(p) << key;
      ASSERT_TRUE(p->grad().defined()) << key;
      EXPECT_GT(p->grad().abs().sum().item<double>(), 0) << key;
    }
  }
}

TEST(Poly, EveryForwardNeedsValidTaskIds) {
  const VectorCase c = VectorCase::load("poly_mlp");
  WarningCapture warnings;
  VectorModel model = base_model(c);
  peft::load_adapter(*model, c.dir.string());
  model->eval();
  const at::Tensor x = c.input();
  expect_error<peft::ConfigError>([&] { model->forward(x); }, "task_ids should not be None");
  {
    const peft::TaskIds tasks(*model, torch::tensor({0, 5, 1}));
    expect_error<peft::ConfigError>([&] { model->forward(x); }, "Only 3 tasks available. Found task id = 5");
  }
  {
    const peft::TaskIds tasks(*model, torch::tensor({0, 1}));
    expect_error<peft::ConfigError>([&] { model->forward(x); }, "TaskIds holds 2 task ids but the batch has 3 samples");
  }
  {
    const peft::TaskIds tasks(*model, torch::tensor({0, 1, 2}));
    expect_error<peft::ConfigError>([&] { model->forward(x.select(1, 0)); }, "must be (batch, sequence, features)");
    // Another model's guard does not reach these layers.
    VectorModel other = base_model(c);
    peft::load_adapter(*other, c.dir.string());
    expect_error<peft::ConfigError>([&] { other->forward(x); }, "task_ids should not be None");
  }
  expect_error<peft::ConfigError>([&] { peft::TaskIds(*model, torch::tensor({0.5, 1.0, 2.0})); }, "1-D integer tensor");
  // Disabled adapters need no task ids.
  peft::DisabledAdapters off(*model);
  EXPECT_LT(max_abs_diff(model->forward(x), c.tensor("output_base.safetensors")), 1e-5);
}

TEST(Poly, EachSampleUsesItsTasksMixture) {
  // Row i of a batch with task ids t equals the forward of that row alone with task t[i].
  const VectorCase c = VectorCase::load("poly_mlp");
  WarningCapture warnings;
  VectorModel model = base_model(c);
  peft::load_adapter(*model, c.dir.string());
  const at::Tensor x = c.input(), ids = case_task_ids(c);
  at::Tensor batch;
  {
    const peft::TaskIds tasks(*model, ids);
    batch = model->forward(x);
  }
  for (int64_t row = 0; row < x.size(0); ++row) {
    const peft::TaskIds one(*model, ids.narrow(0, row, 1));
    EXPECT_LT(max_abs_diff(model->forward(x.narrow(0, row, 1)), batch.narrow(0, row, 1)), 1e-6) << row;
  }
}

TEST(Poly, SplitsMustDivideTheLayerSizes) {
  WarningCapture warnings;
  const VectorCase c = VectorCase::load("poly_mlp");
  VectorModel model = base_model(c);
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(peft::PolyConfig().n_splits(3).target_modules({"lin0", "lin1"}), model);
    ADD_FAILURE() << "n_splits=3 accepted for 10 / 20 features";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("must be divisible by `n_splits` 3 (layer 'lin0')"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(Poly, ConfigChecksUsePythonsTexts) {
  auto rejects = [](const json& fields, const std::string& text) { expect_config_error("POLY", fields, text); };
  rejects({{"r", 0}}, "`r` should be a positive integer value but the value passed is 0");
  rejects({{"poly_type", "mhr"}},
          "Unsupported poly_type: mhr. Currently, only the following types are supported: `poly`.");
  rejects({{"n_tasks", 0}}, "n_tasks");
  rejects({{"n_skills", 0}}, "n_skills");
  rejects({{"n_splits", 0}}, "n_splits");
  rejects({{"layers_to_transform", {0}}}, "layers_to_transform");
}

}  // namespace
}  // namespace peft_test::poly_test
