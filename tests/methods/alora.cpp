// Activated LoRA (LoraConfig::alora_invocation_tokens, peft::AloraScope) against Python PEFT's PeftModelForCausalLM
// (tests/data/methods/alora/, made by its make_reference.py): the offsets Python computes from input_ids, the outputs
// with the adapter active, disabled, without offsets, beside a plain LoRA and in a mixed batch, the gradients, Python's
// saved adapter and our save of it, and the refusals (merging, layers other than Linear).

#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <peft/peft.h>
#include <peft/tuners/lora/alora.h>

#include "support/errors.h"
#include "support/layers.h"
#include "support/vectors.h"
#include "support/warnings.h"
#include "support/scratch.h"

namespace peft_test::alora_test {
namespace {

namespace fs = std::filesystem;

fs::path data_dir() { return cases_dir().parent_path() / "methods" / "alora"; }

// The reference's toy causal LM: logits = head(relu(proj(embed(input_ids)))).
struct ToyLmImpl : torch::nn::Module {
  nn::Embedding embed{16, 8};
  nn::Linear proj{8, 8}, head{8, 16};
  ToyLmImpl() {
    register_module("embed", embed);
    register_module("proj", proj);
    register_module("head", head);
  }
  at::Tensor forward(const at::Tensor& ids) { return head(torch::relu(proj(embed(ids)))); }
};
TORCH_MODULE(ToyLm);

peft::StateDict file(const std::string& name) { return peft::safetensors::load_file((data_dir() / name).string()); }

ToyLm base_model() {
  ToyLm model;
  peft::StateDict weights;
  for (const auto& item : file("base.safetensors")) weights.insert(item.key(), item.value().clone());
  peft::assign_tensors(*model, weights);
  model->eval();
  return model;
}

// Python's model: "alora" (active) and "plain" loaded from its saved directory.
ToyLm python_model(bool trainable = false) {
  ToyLm model = base_model();
  peft::LoadAdapterOptions options;
  options.is_trainable = trainable;
  peft::load_adapter(model, (data_dir() / "saved").string(), "alora", options);
  peft::load_adapter(model, (data_dir() / "saved").string(), "plain", options);
  peft::set_adapter(model, "alora");
  return model;
}

at::Tensor input_ids() { return file("input.safetensors")["input_ids"]; }
at::Tensor expected(const std::string& name) { return file("outputs.safetensors")[name]; }

nlohmann::json offsets_json() { return nlohmann::json::parse(std::ifstream(data_dir() / "offsets.json")); }

peft::AloraOffsets to_offsets(const nlohmann::json& list) {
  peft::AloraOffsets out;
  for (const auto& v : list) out.push_back(v.is_null() ? std::nullopt : std::optional<int64_t>(v.get<int64_t>()));
  return out;
}

std::vector<std::string> mixed_names() { return offsets_json()["mixed_names"].get<std::vector<std::string>>(); }


TEST(Alora, OffsetsMatchPython) {
  ToyLm model = python_model();
  const nlohmann::json python = offsets_json();
  EXPECT_EQ(peft::alora_offsets(model, input_ids()), to_offsets(python["active"]));
  EXPECT_EQ(peft::alora_offsets(model, input_ids(), mixed_names()), to_offsets(python["mixed"]));
  // One row as a 1-D tensor (Python's generate), int32 ids, and a plain LoRA as the active adapter.
  EXPECT_EQ(peft::alora_offsets(model, input_ids()[1]), (peft::AloraOffsets{4}));
  EXPECT_EQ(peft::alora_offsets(model, input_ids().to(at::kInt)), to_offsets(python["active"]));
  EXPECT_TRUE(peft::alora_offsets(model, at::Tensor()).empty());
  peft::set_adapter(model, "plain");
  EXPECT_EQ(peft::alora_offsets(model, input_ids()), (peft::AloraOffsets(4, std::nullopt)));
  // Names past the end of adapter_names take the active adapter, as in Python; unknown names warn.
  EXPECT_EQ(peft::alora_offsets(model, input_ids(), {"alora"}), (peft::AloraOffsets{6, std::nullopt, std::nullopt, std::nullopt}));
  WarningCapture warnings;
  EXPECT_EQ(peft::alora_offsets(model, input_ids(), {"nope", "alora"}), (peft::AloraOffsets{std::nullopt, 4, std::nullopt, std::nullopt}));
  EXPECT_TRUE(warnings.contains("Adapter 'nope' not found in peft_config. Using base model for row 0."));
  expect_error<c10::Error>([&] { peft::alora_offsets(model, input_ids().to(at::kFloat)); }, "integer token ids");
}

TEST(Alora, OutputsMatchPython) {
  ToyLm model = python_model();
  torch::NoGradGuard no_grad;
  {
    peft::AloraScope scope(model, input_ids());
    EXPECT_EQ(scope.offsets(), to_offsets(offsets_json()["active"]));
    EXPECT_LT(max_abs_diff(model->forward(input_ids()), expected("alora")), 1e-5);
    peft::DisabledAdapters disabled(model);
    EXPECT_LT(max_abs_diff(model->forward(input_ids()), expected("disabled")), 1e-5);
  }
  {
    peft::AloraScope scope(model, peft::AloraOffsets{std::nullopt, 2, 1, 0});
    const at::Tensor x = file("input.safetensors")["x2d"];
    EXPECT_LT(max_abs_diff(model->proj(x), expected("proj_2d")), 1e-5) << "(batch, features): one token per row";
  }
  // The aLoRA adapter only acted on the activated tokens: the rest equals the base output exactly.
  EXPECT_GT(max_abs_diff(expected("alora"), expected("disabled")), 1e-3);
  peft::set_adapter(model, "plain");
  {
    peft::AloraScope scope(model, input_ids());  // no effect on a plain LoRA
    EXPECT_LT(max_abs_diff(model->forward(input_ids()), expected("plain")), 1e-5);
  }
  peft::set_adapter(model, "alora");
  {
    const std::vector<std::string> names = mixed_names();
    peft::AdapterNamesPerSample per_sample(model, names);
    peft::AloraScope scope(model, peft::alora_offsets(model, input_ids(), names));
    EXPECT_LT(max_abs_diff(model->forward(input_ids()), expected("mixed")), 1e-5);
  }
  {
    peft::AloraScope scope(model, peft::AloraOffsets{6, 4});
    expect_error<c10::Error>([&] { model->forward(input_ids()); }, "2 offsets for a batch of 4 rows");
  }
}

TEST(Alora, WithoutScopeIsTheBaseModelAndWarns) {
  ToyLm model = python_model();
  torch::NoGradGuard no_grad;
  c10::Warning::WarnAlways always;  // TORCH_WARN_ONCE would warn only in the first test to get here
  WarningCapture warnings;
  EXPECT_LT(max_abs_diff(model->forward(input_ids()), expected("no_offsets")), 1e-6);
  EXPECT_LT(max_abs_diff(model->proj(file("input.safetensors")["x2d"]), expected("proj_2d_none")), 1e-6);
  EXPECT_TRUE(warnings.contains("peft::AloraScope")) << (warnings.messages.empty() ? "no warning" : warnings.messages[0]);
  // A scope for another model does not reach this one.
  ToyLm other = python_model();
  peft::AloraScope scope(other, input_ids());
  EXPECT_LT(max_abs_diff(model->forward(input_ids()), expected("no_offsets")), 1e-6);
}

TEST(Alora, GradientsMatchPython) {
  ToyLm model = python_model(/*trainable=*/true);
  model->train();
  const peft::StateDict grads = file("grads.safetensors");
  const at::Tensor weight = file("input.safetensors")["loss_weight"];
  for (const bool scoped : {true, false}) {
    for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();
    {
      std::optional<peft::AloraScope> scope;
      if (scoped) scope.emplace(model, input_ids());
      (model->forward(input_ids()) * weight).sum().backward();
    }
    int compared = 0;
    for (const auto& item : model->named_parameters()) {
      if (item.key().find(".alora.") == std::string::npos) continue;
      const std::string key = item.key() + (scoped ? "" : "_none");
      ASSERT_TRUE(grads.contains(key)) << key;
      ASSERT_TRUE(item.value().grad().defined()) << key << ": Python's gradient is defined (zero without offsets)";
      EXPECT_LT(max_abs_diff(item.value().grad(), grads[key]), 1e-5) << key;
      ++compared;
    }
    EXPECT_EQ(compared, 4);
  }
}

TEST(Alora, SaveKeepsInvocationTokens) {
  ToyLm model = python_model();
  Scratch scratch("alora");
  peft::save_adapter(model, scratch.path().string(), "alora");
  const auto ours = nlohmann::json::parse(std::ifstream(scratch.path() / "alora" / "adapter_config.json"));
  const auto python = nlohmann::json::parse(std::ifstream(data_dir() / "saved" / "alora" / "adapter_config.json"));
  EXPECT_EQ(ours["alora_invocation_tokens"], python["alora_invocation_tokens"]);
  EXPECT_EQ(ours["task_type"], "CAUSAL_LM");
  const peft::StateDict saved = peft::safetensors::load_file((scratch.path() / "alora" / "adapter_model.safetensors").string());
  const peft::StateDict original = file("saved/alora/adapter_model.safetensors");
  ASSERT_EQ(saved.keys(), original.keys());
  for (const auto& item : original) EXPECT_TRUE(at::equal(saved[item.key()], item.value())) << item.key();

  ToyLm reloaded = base_model();
  peft::load_adapter(reloaded, scratch.path().string(), "alora");
  const auto& config = dynamic_cast<const peft::LoraConfig&>(*peft::adapter_config(reloaded, "alora"));
  EXPECT_EQ(config.alora_invocation_tokens(), (std::vector<int64_t>{3, 4}));
  torch::NoGradGuard no_grad;
  peft::AloraScope scope(reloaded, input_ids());
  EXPECT_LT(max_abs_diff(reloaded->forward(input_ids()), expected("alora")), 1e-5);

  // A config made here writes the tokens too; null without them, as Python.
  const auto cfg = peft::LoraConfig().alora_invocation_tokens(std::vector<int64_t>{7, 8, 9}).task_type("CAUSAL_LM");
  EXPECT_EQ(nlohmann::json::parse(cfg.to_json_string())["alora_invocation_tokens"], nlohmann::json({7, 8, 9}));
  EXPECT_TRUE(nlohmann::json::parse(peft::LoraConfig().to_json_string())["alora_invocation_tokens"].is_null());
}

TEST(Alora, MergeIsRefusedAndChangesNothing) {
  ToyLm model = python_model();
  const at::Tensor before = model->proj->weight.clone();
  expect_error<peft::MergeError>([&] { peft::merge_adapter(model); }, "aLoRA does not support merging.");
  expect_error<peft::MergeError>([&] { peft::merge_adapter(model, {"alora"}, /*safe_merge=*/true); },
                                 "aLoRA does not support safe merging.");
  // Even after a mergeable adapter of the same call: nothing is merged.
  expect_error<peft::MergeError>([&] { peft::merge_adapter(model, {"plain", "alora"}); }, "aLoRA does not support merging.");
  expect_error<peft::MergeError>([&] { peft::merge_and_unload(model); }, "aLoRA does not support merging.");
  EXPECT_TRUE(at::equal(model->proj->weight, before));
  EXPECT_EQ(peft::adapter_names(model), (std::vector<std::string>{"alora", "plain"}));
  torch::NoGradGuard no_grad;
  peft::AloraScope scope(model, input_ids());
  EXPECT_LT(max_abs_diff(model->forward(input_ids()), expected("alora")), 1e-5);
}

TEST(Alora, RefusedWhereVariantsCannotCombine) {
  const auto alora = [] {
    return peft::LoraConfig().r(4).alora_invocation_tokens(std::vector<int64_t>{3, 4}).task_type("CAUSAL_LM");
  };
  ToyLm model = base_model();
  // Python's lora.Embedding / ConvNd / MultiheadAttention have no aLoRA variant; lora.Linear none with DoRA or MiCA.
  expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(alora().target_modules({"proj", "embed"}), model); },
                                  "Invalid or unsupported variant combination: ('alora_invocation_tokens',)");
  expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(alora().use_dora(true).target_modules({"proj"}), model); },
                                  "Invalid or unsupported variant combination: ('alora_invocation_tokens', 'use_dora')");
  expect_error<peft::ConfigError>(
      [&] { peft::inject_adapter_in_model(alora().init_lora_weights("mica").target_modules({"proj"}), model); },
      "Invalid or unsupported variant combination: ('alora_invocation_tokens', 'mica')");
  EXPECT_TRUE(peft::adapter_names(model).empty());
  // An empty list is no variant (Python: a falsy value), so the adapter is a plain LoRA.
  peft::inject_adapter_in_model(alora().alora_invocation_tokens(std::vector<int64_t>{}).target_modules({"embed"}), model);
  // Python warns for another task type, and AdaLoRA (whose config derives from LoraConfig) refuses the field.
  WarningCapture warnings;
  ToyLm other = base_model();
  peft::inject_adapter_in_model(alora().task_type(std::nullopt).target_modules({"proj"}), other);
  EXPECT_TRUE(warnings.contains("aLoRA is currently only supported for CAUSAL_LM task."));
  expect_error<peft::ConfigError>(
      [] { peft::config_from_json_string(R"({"peft_type": "ADALORA", "total_step": 10, "alora_invocation_tokens": [1]})"); },
      "alora_invocation_tokens");
}

}  // namespace
}  // namespace peft_test::alora_test
