// X-LoRA against Python PEFT's XLoraModel (tests/data/methods/xlora/, made by its make_reference.py): the two-pass
// forward and its scalings for three classifier settings, Python's files both ways, and everything refused.

#include <unistd.h>

#include <fstream>

#include <torch/torch.h>

#include <peft/peft.h>
#include <peft/tuners/xlora/model.h>

#include "support/errors.h"
#include "support/layers.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::xlora_test {
namespace {

namespace fs = std::filesystem;

fs::path xlora_dir() { return cases_dir().parent_path() / "methods" / "xlora"; }

// The reference model, shaped like a transformers causal LM (see make_reference.py); drop-in layers where this build
// does not route torch::nn calls (support/layers.h).
struct InnerImpl : torch::nn::Module {
  nn::Embedding embed_tokens{20, 8};
  nn::Linear q_proj{8, 8}, v_proj{8, 8}, fc{8, 8};
  InnerImpl() {
    register_module("embed_tokens", embed_tokens);
    register_module("q_proj", q_proj);
    register_module("v_proj", v_proj);
    register_module("fc", fc);
  }
  at::Tensor forward(const at::Tensor& ids) {
    const at::Tensor h0 = embed_tokens(ids);
    const at::Tensor h1 = h0 + torch::tanh(q_proj(h0)) * v_proj(h0);
    return h1 + fc(torch::relu(h1));
  }
};
TORCH_MODULE(Inner);

struct TinyImpl : torch::nn::Module {
  Inner model;
  nn::Linear lm_head{8, 20};
  TinyImpl() {
    register_module("model", model);
    register_module("lm_head", lm_head);
  }
  at::Tensor forward(const at::Tensor& ids) { return lm_head(model(ids)); }
};
TORCH_MODULE(Tiny);

Tiny tiny() {
  Tiny m;
  const peft::StateDict weights = peft::safetensors::load_file((xlora_dir() / "base.safetensors").string());
  torch::NoGradGuard no_grad;
  for (auto& p : m->named_parameters()) p.value().copy_(weights[p.key()]);
  m->eval();
  return m;
}

peft::XLoraPasses passes(const Tiny& m) {
  return {[p = m.ptr()](const at::Tensor& ids) { return p->model(ids); },
          [p = m.ptr()](const at::Tensor& ids) { return p->forward(ids); }};
}

peft::PatternMap<std::string> experts() {
  peft::PatternMap<std::string> out;
  for (const char* name : {"0", "1", "2"}) out.emplace_back(name, (xlora_dir() / "lora" / name).string());
  return out;
}

// Python's config of a case, its experts at their absolute paths.
peft::XLoraConfig case_config(const std::string& name) {
  const auto loaded = peft::load_config((xlora_dir() / name / "adapter_config.json").string());
  peft::XLoraConfig config = dynamic_cast<const peft::XLoraConfig&>(*loaded);
  config.adapters(experts());
  return config;
}

at::Tensor ids() { return peft::safetensors::load_file((xlora_dir() / "input.safetensors").string())["ids"]; }

at::Tensor expected(const std::string& name, const std::string& key) {
  return peft::safetensors::load_file((xlora_dir() / name / "expected.safetensors").string())[key];
}

peft::StateDict classifier(const std::string& name) {
  return peft::safetensors::load_file((xlora_dir() / name / "classifier.safetensors").string());
}

const char* kCases[] = {"default", "layerwise_topk", "temperature_top1"};


TEST(XLora, ForwardAndScalingsMatchPython) {
  for (const char* name : kCases) {
    SCOPED_TRACE(name);
    WarningCapture warnings;
    Tiny m = tiny();
    peft::XLoraModel xlora(m, case_config(name), passes(m));
    xlora->load_classifier_state_dict(classifier(name));
    xlora->eval();
    EXPECT_EQ(xlora->n_experts(), 3);
    EXPECT_EQ(xlora->layer_names(),
              (std::vector<std::string>{"model.embed_tokens", "model.q_proj", "model.v_proj", "model.fc"}));
    torch::NoGradGuard no_grad;
    const at::Tensor logits = xlora->forward(ids());
    EXPECT_LT(max_abs_diff(logits, expected(name, "logits")), 1e-5);
    EXPECT_LT(max_abs_diff(xlora->latest_scalings(), expected(name, "scalings")), 1e-6);
    // Without X-LoRA's scalings the experts run as plain LoRA at full scale, as in Python.
    xlora->disable_adapter_layers();
    EXPECT_LT(max_abs_diff(xlora->forward(ids()), expected(name, "logits_disabled")), 1e-5);
    EXPECT_LT(max_abs_diff(m->forward(ids()), expected(name, "logits_disabled")), 1e-5);
    xlora->enable_adapter_layers();
    EXPECT_LT(max_abs_diff(xlora->forward(ids()), expected(name, "logits")), 1e-5);
  }
}

TEST(XLora, TheScalingPassUsesItsValue) {
  // layerwise_topk has scaling_pass_value 0.3: the hidden state the classifier reads includes every expert at 0.3
  // (after top-k and its softmax), so a scaling pass without them predicts other scalings.
  WarningCapture warnings;
  Tiny m = tiny();
  peft::XLoraModel xlora(m, case_config("layerwise_topk"), passes(m));
  xlora->load_classifier_state_dict(classifier("layerwise_topk"));
  xlora->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor with_value = xlora->predict_scalings(ids());
  EXPECT_LT(max_abs_diff(with_value, expected("layerwise_topk", "scalings")), 1e-6);
  xlora->set_scaling_pass_value(0.0);
  EXPECT_GT(max_abs_diff(xlora->predict_scalings(ids()), with_value), 1e-4);
  xlora->set_scaling_pass_value(std::nullopt);  // Python: 1 / n
  EXPECT_DOUBLE_EQ(xlora->config().scaling_pass_value(), 1.0 / 3);
}

TEST(XLora, SavedFilesRoundTripAndPythonsConfigReadsBack) {
  WarningCapture warnings;
  Tiny m = tiny();
  peft::XLoraModel xlora(m, case_config("layerwise_topk"), passes(m));
  xlora->load_classifier_state_dict(classifier("layerwise_topk"));
  const fs::path dir = fs::temp_directory_path() / ("peft_xlora_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  peft::save_xlora(xlora, dir.string());
  // The whole classifier under Python's keys.
  const peft::StateDict saved = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
  const peft::StateDict python = classifier("layerwise_topk");
  EXPECT_EQ(saved.size(), python.size());
  for (const auto& item : python) EXPECT_TRUE(torch::equal(saved[item.key()], item.value())) << item.key();
  // Python's config fields, written as Python writes them (its adapters are the relative paths it was given).
  nlohmann::json ours = nlohmann::json::parse(std::ifstream(dir / "adapter_config.json"));
  nlohmann::json theirs = nlohmann::json::parse(std::ifstream(xlora_dir() / "layerwise_topk" / "adapter_config.json"));
  for (auto* j : {&ours, &theirs}) {
    j->erase("peft_version");
    j->erase("adapters");
    j->erase("auto_mapping");
  }
  EXPECT_EQ(ours, theirs);

  Tiny fresh = tiny();
  peft::XLoraModel loaded = peft::load_xlora(fresh, dir.string(), passes(fresh));
  loaded->eval();
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(loaded->forward(ids()), expected("layerwise_topk", "logits")), 1e-5);
  fs::remove_all(dir);
}

TEST(XLora, PythonsTruncatedClassifierFileIsRefusedAndTheModelKept) {
  // Python PEFT 0.20's save_pretrained drops "layers.0" (an adapter's name): its files cannot restore the classifier.
  WarningCapture warnings;
  Tiny m = tiny();
  try {
    peft::load_xlora(m, (xlora_dir() / "layerwise_topk").string(), passes(m), experts());
    ADD_FAILURE() << "no error";
  } catch (const peft::StateDictError& e) {
    EXPECT_NE(std::string(e.what()).find("base_model.internal_xlora_classifier.layers.0.weight"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("drops"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(peft::adapter_names(m).empty());
  EXPECT_TRUE(torch::equal(m->forward(ids()), tiny()->forward(ids())));
}

TEST(XLora, LoadAdapterAndInjectRefuseXLoraWithTheWayToMakeIt) {
  WarningCapture warnings;
  Tiny m = tiny();
  try {
    peft::load_adapter(m, (xlora_dir() / "default").string());
    ADD_FAILURE() << "no error";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("peft::XLoraModel"), std::string::npos) << e.what();
  }
  EXPECT_THROW(peft::inject_adapter_in_model(case_config("default"), m), peft::ConfigError);
  EXPECT_TRUE(peft::adapter_names(m).empty());
  // Nor merged into weights (Python cannot either).
  expect_error<peft::MergeError>(
      [&] {
        peft::merge_into_weights(case_config("default"), classifier("default"),
                                 peft::safetensors::load_file((xlora_dir() / "base.safetensors").string()));
      },
      "XLORA adapters cannot be merged into weights");
}

TEST(XLora, BadSetupsAreRefusedBeforeTheModelChanges) {
  WarningCapture warnings;
  Tiny m = tiny();
  // An expert that does not load: the experts loaded before it are removed again.
  peft::XLoraConfig missing = case_config("default");
  auto list = experts();
  list[2].second = (xlora_dir() / "no_such_adapter").string();
  missing.adapters(list);
  expect_error<peft::FileFormatError>([&] { peft::XLoraModel(m, missing, passes(m)); }, "no_such_adapter");
  EXPECT_TRUE(peft::adapter_names(m).empty());
  // A non-LoRA expert.
  peft::XLoraConfig ia3 = case_config("default");
  list = experts();
  list[1].second = case_dir("ia3_mlp").string();
  ia3.adapters(list);
  expect_error<peft::ConfigError>([&] { peft::XLoraModel(m, ia3, passes(m)); }, "IA3");
  // A DoRA expert (Python fails in the forward; here before anything is kept).
  const fs::path dora = fs::temp_directory_path() / ("peft_xlora_dora_" + std::to_string(::getpid()));
  {
    Tiny other = tiny();
    peft::inject_adapter_in_model(peft::LoraConfig().r(2).use_dora(true).target_modules({"q_proj"}), other);
    peft::save_adapter(other, dora.string());
  }
  peft::XLoraConfig with_dora = case_config("default");
  list = experts();
  list[1].second = dora.string();
  with_dora.adapters(list);
  expect_error<peft::ConfigError>([&] { peft::XLoraModel(m, with_dora, passes(m)); }, "DoRA");
  EXPECT_TRUE(peft::adapter_names(m).empty());
  fs::remove_all(dora);
  // Configuration values.
  expect_error<peft::ConfigError>([&] { peft::XLoraModel(m, case_config("default").top_k_lora(0), passes(m)); },
                                  "`top_k_lora` value must be at least 1.");
  expect_error<peft::ConfigError>([&] { peft::XLoraModel(m, case_config("default").top_k_lora(4), passes(m)); },
                                  "larger than the number of adapters");
  expect_error<peft::ConfigError>([&] { peft::XLoraModel(m, case_config("default").xlora_depth(0), passes(m)); },
                                  "X-LoRA depth must be strictly positive.");
  expect_error<peft::ConfigError>([&] { peft::XLoraModel(m, peft::XLoraConfig().hidden_size(8), passes(m)); },
                                  "no `adapters`");
  expect_error<peft::ConfigError>([&] { peft::XLoraModel(m, case_config("default"), peft::XLoraPasses{}); },
                                  "needs both passes");
  EXPECT_TRUE(peft::adapter_names(m).empty());
  // An adapter already named like an expert.
  peft::inject_adapter_in_model(peft::LoraConfig().r(2).target_modules({"fc"}), m, "0");
  expect_error<peft::AdapterNameError>([&] { peft::XLoraModel(m, case_config("default"), passes(m)); },
                                       "already has an adapter named '0'");
  EXPECT_EQ(peft::adapter_names(m), std::vector<std::string>{"0"});
}

TEST(XLora, WrongHiddenStateShapeAndClassifierFileAreErrors) {
  WarningCapture warnings;
  Tiny m = tiny();
  peft::XLoraPasses wrong = passes(m);
  wrong.last_hidden_state = [p = m.ptr()](const at::Tensor& ids) { return p->forward(ids); };  // logits, not the hidden state
  peft::XLoraModel xlora(m, case_config("default"), wrong);
  expect_error<peft::Error>([&] { xlora->forward(ids()); }, "(batch, sequence, hidden_size) = (2, 5, 8)");
  peft::StateDict bad = classifier("default");
  bad.insert("base_model.internal_xlora_classifier.layers.9.weight", torch::zeros({2}));
  expect_error<peft::StateDictError>([&] { xlora->load_classifier_state_dict(bad); }, "unexpected key");
  peft::StateDict shape;
  for (const auto& item : classifier("default")) shape.insert(item.key(), torch::zeros({1}));
  const at::Tensor before = xlora->classifier_state_dict().begin()->value().clone();
  expect_error<peft::StateDictError>([&] { xlora->load_classifier_state_dict(shape); }, "has shape");
  EXPECT_TRUE(torch::equal(xlora->classifier_state_dict().begin()->value(), before));
}

TEST(XLora, TrainingReachesTheClassifierOnly) {
  WarningCapture warnings;
  Tiny m = tiny();
  peft::XLoraModel xlora(m, case_config("layerwise_topk"), passes(m));
  xlora->train();
  m->train();
  const at::Tensor loss = xlora->forward(ids()).pow(2).mean();
  loss.backward();
  for (const auto& p : xlora->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
  }
  for (const auto& p : m->named_parameters()) EXPECT_FALSE(p.value().grad().defined()) << p.key();
  // use_trainable_adapters: the experts train too.
  Tiny other = tiny();
  peft::XLoraModel trainable(other, case_config("default").use_trainable_adapters(true), passes(other));
  trainable->forward(ids()).pow(2).mean().backward();
  const auto params = other->named_parameters();
  EXPECT_TRUE(params["model.q_proj.lora_A.0.weight"].grad().defined());
  EXPECT_FALSE(params["model.q_proj.weight"].grad().defined());
}

TEST(XLora, ScalingsLogAndSettings) {
  WarningCapture warnings;
  Tiny m = tiny();
  peft::XLoraModel xlora(m, case_config("default"), passes(m));
  torch::NoGradGuard no_grad;
  xlora->enable_scalings_logging();
  xlora->forward(ids());
  xlora->forward(ids().slice(1, 0, 3));
  xlora->forward(ids());
  xlora->disable_scalings_logging();
  xlora->forward(ids());
  ASSERT_EQ(xlora->scalings_log().size(), 3u);
  const auto buckets = xlora->bucketed_scalings_log();
  ASSERT_EQ(buckets.size(), 2u);
  EXPECT_EQ(buckets.at(5).first, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(buckets.at(3).first, (std::vector<int64_t>{1}));
  xlora->clear_scalings_log();
  EXPECT_TRUE(xlora->scalings_log().empty());
  // top-k and the global weight change the output; the global weight scales only the experts' part.
  const at::Tensor base = [&] {
    peft::DisabledAdapters off(m);
    return m->forward(ids());
  }();
  const at::Tensor full = xlora->forward(ids());
  xlora->set_global_scaling_weight(2.0);
  EXPECT_DOUBLE_EQ(xlora->global_scaling_weight(), 2.0);
  const at::Tensor doubled = xlora->forward(ids());
  EXPECT_GT(max_abs_diff(doubled, full), 1e-3);
  xlora->set_global_scaling_weight(1.0);
  xlora->set_topk_lora(1);
  EXPECT_GT(max_abs_diff(xlora->forward(ids()), full), 1e-4);
  EXPECT_THROW(xlora->set_topk_lora(4), peft::ConfigError);
  EXPECT_GT(max_abs_diff(base, full), 1e-3);
}

}  // namespace
}  // namespace peft_test::xlora_test
