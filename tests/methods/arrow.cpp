// LoRA's Arrow routing and GenKnowSub (create_arrow_model, ArrowConfig) against Python PEFT
// (tests/data/methods/arrow/, made by its make_reference.py): routed outputs, GenKnowSub's in-place subtraction,
// a task adapter added later, the router's adapter_config.json, and the refusals (model left unchanged).

#include <torch/torch.h>

#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include <peft/peft.h>
#include <peft/tuners/lora/arrow.h>

#include "support/errors.h"
#include "support/small_mlp.h"
#include "support/vectors.h"
#include "support/scratch.h"

namespace peft_test::arrow_test {
namespace {

namespace fs = std::filesystem;

fs::path data_dir() { return cases_dir().parent_path() / "methods" / "arrow"; }
std::string adapter_dir(const std::string& name) { return (data_dir() / name).string(); }
SmallMlp base_model() { return load_small_mlp(data_dir() / "base.safetensors"); }
at::Tensor input() { return peft::safetensors::load_file((data_dir() / "input.safetensors").string())["x"]; }
nlohmann::json json_of(const fs::path& file) { return nlohmann::json::parse(std::ifstream(file)); }

const std::vector<std::string> kTasks{adapter_dir("task_0"), adapter_dir("task_1"), adapter_dir("task_2")};
const std::vector<std::string> kGeneral{adapter_dir("general_0"), adapter_dir("general_1")};

peft::ArrowConfig reference_config(bool use_gks) {
  return peft::ArrowConfig().top_k(2).router_temperature(0.7).rng_seed(11).use_gks(use_gks);
}


class Arrow : public testing::TestWithParam<std::string> {
 protected:
  bool use_gks() const { return GetParam() == "arrow_gks"; }
  fs::path case_dir() const { return data_dir() / GetParam(); }
  peft::StateDict reference() const { return peft::safetensors::load_file((case_dir() / "output.safetensors").string()); }
};

TEST_P(Arrow, RoutesAsPython) {
  SmallMlp model = base_model();
  peft::create_arrow_model(model, kTasks, kGeneral, reference_config(use_gks()));
  EXPECT_EQ(peft::active_adapters(model), std::vector<std::string>{"arrow_router"});
  std::vector<std::string> expected_names{"task_0", "task_1", "task_2"};
  if (use_gks()) expected_names.insert(expected_names.end(), {"gks_0", "gks_1"});
  expected_names.push_back("arrow_router");
  EXPECT_EQ(peft::adapter_names(model), expected_names);

  const peft::StateDict expected = reference();
  torch::NoGradGuard no_grad;
  const at::Tensor out = model->forward(input());
  EXPECT_LT(max_abs_diff(out, expected["output"]), 1e-5);
  // The first forward ran GenKnowSub: the task adapters now hold their weights minus the general adapters' mean.
  for (int i = 0; i < 3; ++i) {
    const std::string task = "task_" + std::to_string(i);
    const peft::StateDict ours = peft::get_peft_model_state_dict(model, task);
    int64_t compared = 0;
    for (const auto& item : expected) {
      const std::string prefix = task + ".base_model.model.";
      if (item.key().rfind(prefix, 0) != 0) continue;
      const std::string key = item.key().substr(prefix.size());
      ASSERT_TRUE(ours.contains(key)) << key;
      EXPECT_LT(max_abs_diff(ours[key], item.value()), 1e-6) << task << " " << key;
      ++compared;
    }
    EXPECT_EQ(compared, static_cast<int64_t>(ours.size()));
    EXPECT_EQ(compared, 4);
  }
  // A second forward routes the same way (prototypes and GenKnowSub are done once).
  EXPECT_LT(max_abs_diff(model->forward(input()), expected["output"]), 1e-5);

  // A new task adapter: the router takes it in (new prototypes; GenKnowSub on it alone), as Python's on_adapter_change.
  peft::load_adapter(model, adapter_dir("task_3"), "task_3");
  peft::set_adapter(model, "arrow_router");
  EXPECT_LT(max_abs_diff(model->forward(input()), expected["output_added"]), 1e-5);
}

TEST_P(Arrow, RouterConfigAsPythonWritesIt) {
  SmallMlp model = base_model();
  peft::create_arrow_model(model, kTasks, kGeneral, reference_config(use_gks()));
  Scratch scratch("arrow_" + std::string(GetParam()));
  peft::save_adapter(model, (scratch / "saved").string(), "arrow_router");
  const nlohmann::json ours = json_of(scratch / "saved" / "arrow_router" / "adapter_config.json");
  const nlohmann::json python = json_of(case_dir() / "router" / "adapter_config.json");
  EXPECT_EQ(ours["arrow_config"], python["arrow_config"]) << ours["arrow_config"].dump();
  for (const char* key : {"r", "lora_alpha", "peft_type"}) EXPECT_EQ(ours[key], python[key]) << key;
  // Python writes its set of target modules in hash order.
  auto names = [](const nlohmann::json& list) { return list.get<std::set<std::string>>(); };
  EXPECT_EQ(names(ours["target_modules"]), names(python["target_modules"]));

  // Python's file read back: the ArrowConfig, and the same JSON written again.
  const auto loaded = peft::load_config((case_dir() / "router" / "adapter_config.json").string());
  const auto& lora = dynamic_cast<const peft::LoraConfig&>(*loaded);
  ASSERT_TRUE(lora.arrow_config().has_value());
  const peft::ArrowConfig& arrow = *lora.arrow_config();
  EXPECT_EQ(arrow.top_k(), 2);
  EXPECT_DOUBLE_EQ(arrow.router_temperature(), 0.7);
  EXPECT_EQ(arrow.use_gks(), use_gks());
  EXPECT_EQ(arrow.rng_seed(), std::optional<int64_t>(11));
  EXPECT_EQ(arrow.task_adapter_names(), (std::vector<std::string>{"task_0", "task_1", "task_2"}));
  const std::vector<std::string> gks = use_gks() ? std::vector<std::string>{"gks_0", "gks_1"} : std::vector<std::string>{};
  EXPECT_EQ(arrow.gks_adapter_names(), gks);
  const nlohmann::json again = nlohmann::json::parse(loaded->to_json_string());
  EXPECT_EQ(again["arrow_config"], python["arrow_config"]);
}

TEST_P(Arrow, PerSampleRowsRouteAsTheBatch) {
  SmallMlp model = base_model();
  peft::create_arrow_model(model, kTasks, kGeneral, reference_config(use_gks()));
  torch::NoGradGuard no_grad;
  const at::Tensor x = input();
  at::Tensor mixed;
  {
    peft::AdapterNamesPerSample rows(model, {"arrow_router", "__base__"});
    mixed = model->forward(x);
  }
  const at::Tensor routed = model->forward(x);
  at::Tensor base;
  {
    peft::DisabledAdapters disabled(model);
    base = model->forward(x);
  }
  EXPECT_LT(max_abs_diff(mixed[0], routed[0]), 1e-6);
  EXPECT_LT(max_abs_diff(mixed[1], base[1]), 1e-6);
  EXPECT_GT(max_abs_diff(routed[0], base[0]), 1e-3);  // the routing does change the output
}

INSTANTIATE_TEST_SUITE_P(Python, Arrow, testing::Values("arrow", "arrow_gks"));

// The router saved and loaded again beside the same task adapters routes as before (without GenKnowSub, which a
// second router would apply to the already subtracted task adapters again, in Python as here).
TEST(ArrowRouter, SavedRouterLoadsAndRoutes) {
  Scratch scratch("arrow_saved_router");
  {
    SmallMlp model = base_model();
    peft::create_arrow_model(model, kTasks, {}, reference_config(false));
    peft::save_adapter(model, (scratch / "saved").string(), "arrow_router");
  }
  SmallMlp model = base_model();
  for (int i = 0; i < 3; ++i) peft::load_adapter(model, kTasks[i], "task_" + std::to_string(i));
  peft::load_adapter(model, (scratch / "saved").string(), "arrow_router");
  peft::set_adapter(model, "arrow_router");
  torch::NoGradGuard no_grad;
  const at::Tensor expected = peft::safetensors::load_file((data_dir() / "arrow" / "output.safetensors").string())["output"];
  EXPECT_LT(max_abs_diff(model->forward(input()), expected), 1e-5);
}

TEST(ArrowErrors, MergingTheRouterIsRefused) {
  SmallMlp model = base_model();
  peft::create_arrow_model(model, kTasks, kGeneral, reference_config(true));
  const at::Tensor weight = model->lin0->weight.detach().clone();
  expect_error<peft::MergeError>([&] { peft::merge_adapter(model); },
                                 "Cannot merge an active Arrow router adapter. Remove it first.");
  expect_error<peft::MergeError>([&] { peft::merge_and_unload(model); },
                                 "Cannot merge an active Arrow router adapter. Remove it first.");
  EXPECT_TRUE(torch::equal(model->lin0->weight, weight));
  EXPECT_EQ(peft::adapter_names(model).size(), 6u);
}

// A LoRA adapter saved from the MLP with `config`.
std::string saved_adapter(const Scratch& scratch, const std::string& name, peft::LoraConfig config) {
  SmallMlp model = base_model();
  peft::inject_adapter_in_model(config.init_lora_weights(false), model);
  const std::string dir = (scratch / name).string();
  peft::save_adapter(model, dir);
  return dir;
}

// The refusals of create_arrow_model leave the model as it was: no adapter, the base output.
void expect_untouched(SmallMlp& model, const at::Tensor& base_output) {
  EXPECT_TRUE(peft::adapter_names(model).empty());
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(model->forward(input()), base_output));
}

TEST(ArrowErrors, MismatchedAdaptersAreRefused) {
  Scratch scratch("arrow_mismatch");
  SmallMlp model = base_model();
  at::Tensor base_output;
  {
    torch::NoGradGuard no_grad;
    base_output = model->forward(input());
  }
  const std::string rank2 = saved_adapter(scratch, "rank2", peft::LoraConfig().r(2).target_modules({"lin0", "lin1"}));
  expect_error<peft::ConfigError>([&] { peft::create_arrow_model(model, {kTasks[0], rank2}, {}, peft::ArrowConfig()); },
                                  "[task_1] rank mismatch: 2 != 4");
  expect_untouched(model, base_output);

  const std::string lin1 = saved_adapter(scratch, "lin1", peft::LoraConfig().r(4).target_modules({"lin1"}));
  expect_error<peft::ConfigError>(
      [&] { peft::create_arrow_model(model, {kTasks[0], kTasks[1]}, {lin1}, peft::ArrowConfig().use_gks(true)); },
      "[gks_0] target_modules mismatch:\n  this adapter -> ['lin1']\n  reference   -> ['lin0', 'lin1']");
  expect_untouched(model, base_output);

  const std::string lin2 = saved_adapter(scratch, "lin2", peft::LoraConfig().r(4).target_modules({"lin0", "lin2"}));
  expect_error<peft::ConfigError>(
      [&] { peft::create_arrow_model(model, {kTasks[0], lin2}, {}, peft::ArrowConfig()); },
      "[task_1] shape mismatch: (torch.Size([4, 20]), torch.Size([4, 4])) != (torch.Size([4, 20]), torch.Size([20, 4]))");
  expect_untouched(model, base_output);

  // What Python refuses before any adapter is built.
  expect_error<peft::ConfigError>([&] { peft::create_arrow_model(model, {}, kGeneral, peft::ArrowConfig()); },
                                  "`task_specific_adapter_paths` should contain at least one adapter path");
  expect_error<peft::ConfigError>(
      [&] { peft::create_arrow_model(model, kTasks, {}, peft::ArrowConfig().use_gks(true)); },
      "You should provide general LoRA paths if you want to use GenKnowSub.");
  expect_error<peft::ConfigError>([&] { peft::create_arrow_model(model, kTasks, {}, peft::ArrowConfig().top_k(0)); },
                                  "top_k cannot be negative.");
  expect_error<peft::ConfigError>(
      [&] { peft::create_arrow_model(model, kTasks, {}, peft::ArrowConfig().router_temperature(0)); },
      "router_temperature must be greater than 0.");
  expect_untouched(model, base_output);
}

TEST(ArrowErrors, RefusalKeepsTheModelsOwnAdapters) {
  Scratch scratch("arrow_own");
  SmallMlp model = base_model();
  peft::load_adapter(model, kTasks[0], "default");  // frozen, active
  const std::string rank2 = saved_adapter(scratch, "rank2", peft::LoraConfig().r(2).target_modules({"lin0", "lin1"}));
  expect_error<peft::ConfigError>([&] { peft::create_arrow_model(model, {kTasks[1], rank2}, {}, peft::ArrowConfig()); },
                                  "[task_1] rank mismatch: 2 != 4");
  EXPECT_EQ(peft::adapter_names(model), std::vector<std::string>{"default"});
  EXPECT_EQ(peft::active_adapters(model), std::vector<std::string>{"default"});
  EXPECT_EQ(peft::trainable_parameters(model).trainable, 0);
}

struct LinearConvImpl : torch::nn::Module {
  nn::Linear lin{8, 8};
  nn::Conv2d conv{torch::nn::Conv2dOptions(3, 4, 3)};
  LinearConvImpl() {
    register_module("lin", lin);
    register_module("conv", conv);
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& image) { return lin(x).sum() + conv(image).sum(); }
};
TORCH_MODULE(LinearConv);

TEST(ArrowErrors, NonLinearTargetsAreRefused) {
  Scratch scratch("arrow_conv");
  const std::string dir = (scratch / "conv_task").string();
  {
    LinearConv source;
    peft::inject_adapter_in_model(peft::LoraConfig().r(2).target_modules({"lin", "conv"}).init_lora_weights(false), source);
    peft::save_adapter(source, dir);
  }
  LinearConv model;
  const at::Tensor conv_weight = model->conv->weight.detach().clone();
  expect_error<peft::UnsupportedLayerError>(
      [&] { peft::create_arrow_model(model, {dir, dir}, {}, peft::ArrowConfig().top_k(1)); },
      "LoRA adapters must only target Linear-like layers (nn.Linear, nn.Conv1d, HF Conv1D, or "
      "bitsandbytes.nn.Linear4bit). Found:\n  - adapter 'task_0' on module 'conv' of type Conv2d\n  - adapter "
      "'task_1' on module 'conv' of type Conv2d");
  EXPECT_TRUE(peft::adapter_names(model).empty());
  EXPECT_TRUE(torch::equal(model->conv->weight, conv_weight));

  // A router injected by hand onto a convolution: Python's resolve_lora_variant refuses the combination.
  peft::LoraConfig router;
  router.target_modules({"conv"}).arrow_config(peft::ArrowConfig().top_k(1));
  expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(router, model, "arrow_router"); },
                                  "Invalid or unsupported variant combination: ('arrow_config',)");
  EXPECT_TRUE(peft::adapter_names(model).empty());
}

TEST(ArrowErrors, OtherVariantsAndBadValuesAreRefused) {
  SmallMlp model = base_model();
  peft::LoraConfig config;
  config.target_modules({"lin0"}).arrow_config(peft::ArrowConfig()).use_dora(true);
  expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(config, model); },
                                  "Invalid or unsupported variant combination: ('arrow_config', 'use_dora')");
  config.use_dora(false).arrow_config(peft::ArrowConfig().router_temperature(-1));
  expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(config, model); },
                                  "router_temperature must be greater than 0.");
  EXPECT_TRUE(peft::adapter_names(model).empty());
  expect_error<peft::ConfigError>(
      [&] { peft::config_from_json_string(R"({"peft_type": "LORA", "arrow_config": {"top_k": 0}})"); },
      "top_k cannot be negative.");
  expect_error<peft::ConfigError>(
      [&] { peft::config_from_json_string(R"({"peft_type": "LORA", "arrow_config": {"rng_seed": "x"}})"); },
      "rng_seed");
  // AdaLoRA's config has Python's field too, without the routing.
  expect_error<peft::ConfigError>(
      [&] { peft::config_from_json_string(R"({"peft_type": "ADALORA", "total_step": 10, "arrow_config": {"top_k": 2}})"); },
      "Arrow routing is only available for LoRA");
}

TEST(ArrowErrors, RouterWithoutTaskAdaptersSaysSo) {
  SmallMlp model = base_model();
  peft::LoraConfig router;
  router.r(4).target_modules({"lin0"}).arrow_config(peft::ArrowConfig().top_k(1));
  peft::inject_adapter_in_model(router, model, "arrow_router");
  torch::NoGradGuard no_grad;
  expect_error<peft::ConfigError>([&] { model->forward(input()); }, "has no task adapter to route to");
  // Any other LoRA adapter of the layer is a task adapter (Python's on_adapter_change): one expert, top_k=1.
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"lin0"}).init_lora_weights(false), model, "expert");
  peft::set_adapter(model, "arrow_router");
  const at::Tensor routed = model->forward(input());
  peft::set_adapter(model, "expert");
  // With one expert, softmax gives it weight 1: the plain LoRA output.
  EXPECT_LT(max_abs_diff(routed, model->forward(input())), 1e-5);
}

}  // namespace
}  // namespace peft_test::arrow_test
