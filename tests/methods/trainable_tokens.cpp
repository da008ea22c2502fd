// TrainableTokens beyond its vectors (tests/data/vectors/trainable_tokens_embedding). The MethodVariants
// models have no Embedding, so the generic checks (output changes, merge/unmerge, training reaches only the
// delta, save/load, config JSON, state-dict injection) are written here on a small language model. Weight
// tying is checked against Python PEFT's outputs for a model whose lm_head shares the embedding's weight
// (tests/data/methods/trainable_tokens/, made by its gen_tied.py).

#include <filesystem>
#include <fstream>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::trainable_tokens_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ids (2, 6) -> emb (20 x 12) -> proj (12 -> 12) -> relu -> head (12 -> 20, no bias)
struct EmbLMImpl : torch::nn::Module {
  nn::Embedding emb{nullptr};
  nn::Linear proj{nullptr}, head{nullptr};
  EmbLMImpl() {
    emb = register_module("emb", nn::Embedding(20, 12));
    proj = register_module("proj", nn::Linear(12, 12));
    head = register_module("head", nn::Linear(torch::nn::LinearOptions(12, 20).bias(false)));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(torch::relu(proj(emb(x)))); }
};
TORCH_MODULE(EmbLM);

// Python's TiedLM of gen_tied.py: lm_head's weight is embed_tokens' storage.
struct TiedLMImpl : torch::nn::Module {
  nn::Embedding embed_tokens{nullptr};
  nn::Linear proj{nullptr}, lm_head{nullptr};
  explicit TiedLMImpl(bool tie_member_only = false) {
    embed_tokens = register_module("embed_tokens", nn::Embedding(16, 8));
    proj = register_module("proj", nn::Linear(8, 8));
    lm_head = register_module("lm_head", nn::Linear(torch::nn::LinearOptions(8, 16).bias(false)));
    torch::NoGradGuard no_grad;
    if (tie_member_only) {
      lm_head->weight = embed_tokens->weight;  // what the forward uses; the registered parameter stays apart
    } else {
      lm_head->weight.set_(embed_tokens->weight);  // the registered parameter shares the embedding's storage
    }
  }
  torch::Tensor forward(const torch::Tensor& x) { return lm_head(torch::relu(proj(embed_tokens(x)))); }
};
TORCH_MODULE(TiedLM);

const at::Tensor& ids() {
  static const at::Tensor x = torch::tensor({1, 3, 5, 0, 7, 19, 5, 5, 2, 1, 11, 3}, torch::kLong).view({2, 6});
  return x;
}

EmbLM emb_model() {
  torch::manual_seed(1);
  EmbLM model;
  model->eval();
  return model;
}

std::shared_ptr<peft::PeftConfig> tokens_config(json fields = json::object()) {
  json config = {{"peft_type", "TRAINABLE_TOKENS"}, {"target_modules", {"emb"}}, {"token_indices", {1, 3, 5}}};
  config.update(fields);
  return peft::config_from_json_string(config.dump());
}

// Moves the trainable tensors (the active adapter's deltas) away from their (no-op) initial values.
void perturb(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  for (auto& param : model.named_parameters()) {
    if (param.value().requires_grad()) param.value().add_(0.5 * torch::randn_like(param.value()));
  }
}

// Injects and perturbs, as training would.
void inject_trained(torch::nn::Module& model, const peft::PeftConfig& config, const std::string& name = "default") {
  peft::inject_adapter_in_model(config, model, name);
  perturb(model);
}

at::Tensor delta_of(torch::nn::Module& model, const std::string& key) {
  const auto named = model.named_parameters();  // find() points into it: keep it alive
  const at::Tensor* t = named.find(key);
  TORCH_CHECK(t, "no parameter ", key);
  return *t;
}

fs::path tied_dir() { return vectors_dir().parent_path() / "methods" / "trainable_tokens"; }

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TiedLM tied_model(bool tie_member_only = false) {
  TiedLM model(tie_member_only);
  model->eval();
  const peft::StateDict base = peft::safetensors::load_file((tied_dir() / "base.safetensors").string());
  torch::NoGradGuard no_grad;
  model->embed_tokens->weight.copy_(base["embed_tokens.weight"]);
  model->proj->weight.copy_(base["proj.weight"]);
  model->proj->bias.copy_(base["proj.bias"]);
  return model;
}

at::Tensor tied_input() { return peft::safetensors::load_file((tied_dir() / "input.safetensors").string())["x"]; }
at::Tensor tied_expected(const std::string& key) {
  return peft::safetensors::load_file((tied_dir() / "expected.safetensors").string())[key];
}

// ---------------------------------------------------------------- one embedding

TEST(TrainableTokens, ReplacesOnlyTheTrainedRows) {
  WarningCapture warnings;
  auto model = emb_model();
  const at::Tensor base_rows = model->emb(ids()).detach().clone();
  const at::Tensor base_out = model->forward(ids()).detach().clone();
  peft::inject_adapter_in_model(*tokens_config(), model);
  EXPECT_LT(max_abs_diff(model->forward(ids()), base_out), 1e-6) << "init_weights=true must start as a no-op";
  EXPECT_EQ(delta_of(*model, "emb.trainable_tokens_delta.default").sizes().vec(), (std::vector<int64_t>{3, 12}));
  perturb(*model);
  inject_trained(*model, *tokens_config({{"token_indices", {2, 4}}}), "other");
  peft::set_adapter(model, "default");
  const at::Tensor delta = delta_of(*model, "emb.trainable_tokens_delta.default").detach();
  const at::Tensor rows = model->emb(ids()).detach();
  const auto flat_ids = ids().flatten();
  for (int64_t i = 0; i < flat_ids.numel(); ++i) {
    const int64_t id = flat_ids[i].item<int64_t>();
    const at::Tensor got = rows.view({-1, 12})[i];
    const int64_t slot = id == 1 ? 0 : id == 3 ? 1 : id == 5 ? 2 : -1;
    if (slot < 0) {
      EXPECT_TRUE(torch::equal(got, base_rows.view({-1, 12})[i])) << "token " << id << " changed";
    } else {
      EXPECT_TRUE(torch::equal(got, delta[slot])) << "token " << id << " is not its delta row";
    }
  }
  EXPECT_GT(max_abs_diff(model->forward(ids()), base_out), 1e-3);
  // Both adapters at once: disjoint rows, each its own.
  peft::set_adapter(model, std::vector<std::string>{"default", "other"});
  const at::Tensor both = model->emb(torch::tensor({1, 2}, torch::kLong)).detach();
  EXPECT_TRUE(torch::equal(both[0], delta[0]));
  EXPECT_TRUE(torch::equal(both[1], delta_of(*model, "emb.trainable_tokens_delta.other").detach()[0]));
  {
    peft::DisabledAdapters off(model);
    EXPECT_LT(max_abs_diff(model->forward(ids()), base_out), 1e-6);
  }
}

TEST(TrainableTokens, MergeUnmergeAndUnload) {
  WarningCapture warnings;
  auto model = emb_model();
  inject_trained(*model, *tokens_config());
  const at::Tensor adapted = model->forward(ids()).detach().clone();
  const ModelSnapshot before(*model);
  peft::merge_adapter(*model, std::vector<std::string>{}, /*safe_merge=*/true);
  EXPECT_LT(max_abs_diff(model->forward(ids()), adapted), 1e-6);
  const at::Tensor merged_weight = model->emb->weight.detach().clone();
  const at::Tensor delta = delta_of(*model, "emb.trainable_tokens_delta.default").detach();
  EXPECT_TRUE(torch::equal(merged_weight.index_select(0, torch::tensor({1, 3, 5})), delta));
  peft::unmerge_adapter(*model);
  for (const auto& [key, value] : before.values) {
    EXPECT_TRUE(torch::equal(model->named_parameters()[key], value)) << key;
  }
  EXPECT_LT(max_abs_diff(model->forward(ids()), adapted), 1e-6);
  peft::merge_and_unload(*model);
  EXPECT_TRUE(peft::targeted_module_names(model).empty());
  EXPECT_TRUE(torch::equal(model->emb->weight, merged_weight));
  EXPECT_LT(max_abs_diff(model->forward(ids()), adapted), 1e-6);
}

TEST(TrainableTokens, UnmergeRestoresTheBaseAlsoWithRandomInit) {
  // Python keeps the delta's initial (random) values as the "original" with init_weights=false, so its unmerge
  // would write them into the weight; here the rows the merge overwrote come back.
  WarningCapture warnings;
  auto model = emb_model();
  const at::Tensor base = model->emb->weight.detach().clone();
  peft::inject_adapter_in_model(*tokens_config({{"init_weights", false}}), model);
  peft::merge_adapter(*model);
  EXPECT_FALSE(torch::equal(model->emb->weight, base));
  peft::unmerge_adapter(*model);
  EXPECT_TRUE(torch::equal(model->emb->weight, base));
}

TEST(TrainableTokens, TrainingReachesOnlyTheDelta) {
  WarningCapture warnings;
  auto model = emb_model();
  inject_trained(*model, *tokens_config());
  model->train();
  model->forward(ids()).pow(2).sum().backward();
  int64_t trained = 0;
  for (const auto& param : model->named_parameters()) {
    if (!param.value().requires_grad()) {
      EXPECT_FALSE(param.value().grad().defined()) << param.key();
      continue;
    }
    ++trained;
    EXPECT_EQ(param.key(), "emb.trainable_tokens_delta.default");
    ASSERT_TRUE(param.value().grad().defined());
    // Every trained token occurs in the input, so every row gets a gradient.
    EXPECT_GT(param.value().grad().abs().sum(1).min().item<double>(), 0.0);
  }
  EXPECT_EQ(trained, 1);
  EXPECT_EQ(peft::get_peft_model_state_dict(*model).keys(), std::vector<std::string>{"emb.trainable_tokens_delta"});
  // The originals are state, not parameters.
  EXPECT_TRUE(model->named_buffers().contains("emb.trainable_tokens_original.default"));
}

TEST(TrainableTokens, SaveAndLoadRoundTrip) {
  WarningCapture warnings;
  auto model = emb_model();
  inject_trained(*model, *tokens_config());
  const at::Tensor adapted = model->forward(ids()).detach().clone();
  const fs::path dir = fs::temp_directory_path() / ("peft_tokens_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  peft::save_adapter(*model, dir.string());
  const json saved = json::parse(read_bytes(dir / "adapter_config.json"));
  EXPECT_EQ(saved["token_indices"], json({1, 3, 5}));
  for (const char* absent : {"exclude_modules", "modules_to_save", "layers_to_transform", "layers_pattern"}) {
    EXPECT_FALSE(saved.contains(absent)) << absent;
  }
  for (bool low_cpu : {false, true}) {
    auto fresh = emb_model();
    peft::LoadAdapterOptions options;
    options.low_cpu_mem_usage = low_cpu;
    const peft::LoadResult result = peft::load_adapter(fresh, dir.string(), "default", options);
    EXPECT_TRUE(result.missing_keys.empty());
    EXPECT_TRUE(result.unexpected_keys.empty());
    EXPECT_LT(max_abs_diff(fresh->forward(ids()), adapted), 1e-6) << "low_cpu=" << low_cpu;
    peft::merge_and_unload(*fresh);
    EXPECT_LT(max_abs_diff(fresh->forward(ids()), adapted), 1e-6) << "low_cpu=" << low_cpu;
  }
  fs::remove_all(dir);
}

TEST(TrainableTokens, ConfigSurvivesJson) {
  WarningCapture warnings;
  const std::string once = tokens_config({{"init_weights", false}})->to_json_string();
  EXPECT_EQ(peft::config_from_json_string(once)->to_json_string(), once);
  const auto typed = std::dynamic_pointer_cast<peft::TrainableTokensConfig>(peft::config_from_json_string(once));
  ASSERT_TRUE(typed);
  EXPECT_EQ(typed->token_indices(), (std::vector<int64_t>{1, 3, 5}));
  EXPECT_FALSE(typed->init_weights());
  // The builder writes what Python writes.
  const json built = json::parse(peft::TrainableTokensConfig().token_indices({4, 2}).target_modules({"emb"}).to_json_string());
  EXPECT_EQ(built["token_indices"], json({4, 2}));
  EXPECT_EQ(built["init_weights"], true);
}

TEST(TrainableTokens, ConfigValidation) {
  WarningCapture warnings;
  EXPECT_THROW(tokens_config({{"token_indices", {1, -2}}}), peft::ConfigError);
  EXPECT_THROW(tokens_config({{"token_indices", {1, 3, 1}}}), peft::ConfigError);
  EXPECT_THROW(tokens_config({{"token_indices", "1"}}), peft::ConfigError);
  // Python's TrainableTokensConfig has none of these, so a value would be silently meaningless.
  EXPECT_THROW(tokens_config({{"layers_to_transform", {0}}}), peft::ConfigError);
  EXPECT_THROW(tokens_config({{"modules_to_save", {"proj"}}}), peft::ConfigError);
  // An index past the layer's rows is refused at injection, naming the layer; nothing changes.
  auto model = emb_model();
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(*tokens_config({{"token_indices", {1, 20}}}), model);
    ADD_FAILURE() << "index 20 of a 20-row embedding accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'emb'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(TrainableTokens, StateDictInjectionAdaptsTheLayersItNames) {
  WarningCapture warnings;
  auto source = emb_model();
  inject_trained(*source, *tokens_config());
  const peft::StateDict weights = peft::get_peft_model_state_dict(*source);
  auto model = emb_model();
  peft::inject_adapter_in_model(*tokens_config({{"target_modules", "not_a_layer"}}), model, "default", false, weights);
  peft::set_peft_model_state_dict(*model, weights);
  EXPECT_EQ(peft::targeted_module_names(model), std::vector<std::string>{"emb"});
  EXPECT_LT(max_abs_diff(model->forward(ids()), source->forward(ids())), 1e-6);
}

TEST(TrainableTokens, LinearRowsAreOutputFeatures) {
  // Python's layer computes F.linear for an nn.Linear: the rows are output units (an untied lm_head's tokens).
  WarningCapture warnings;
  auto model = emb_model();
  const at::Tensor base_out = model->forward(ids()).detach().clone();
  inject_trained(*model, *tokens_config({{"target_modules", {"head"}}, {"token_indices", {0, 7}}}));
  const at::Tensor adapted = model->forward(ids()).detach().clone();
  const at::Tensor changed = (adapted - base_out).abs().amax({0, 1}) > 1e-6;
  EXPECT_TRUE(torch::equal(changed.nonzero().flatten(), torch::tensor({0, 7}, torch::kLong)));
  peft::merge_and_unload(*model);
  EXPECT_LT(max_abs_diff(model->forward(ids()), adapted), 1e-6);
}

TEST(TrainableTokens, EmbeddingOptionsApply) {
  WarningCapture warnings;
  torch::manual_seed(4);
  nn::Embedding emb(torch::nn::EmbeddingOptions(10, 6).max_norm(1.0).padding_idx(0));
  auto model = std::make_shared<torch::nn::Module>();
  model->register_module("emb", emb.ptr());
  peft::inject_adapter_in_model(*tokens_config({{"token_indices", {0, 2}}, {"init_weights", false}}), model);
  const at::Tensor x = torch::tensor({0, 2, 3}, torch::kLong);
  const at::Tensor weight_before = emb->weight.detach().clone();
  const at::Tensor out = emb(x);
  // max_norm renormalises the looked-up rows of the adapted weight, not the base weight (as in Python).
  EXPECT_LE(out.norm(2, {1}).max().item<double>(), 1.0 + 1e-6);
  EXPECT_TRUE(torch::equal(emb->weight, weight_before));
  // padding_idx: the padding row (a trained one here) gets no gradient.
  emb->train();
  emb(x).sum().backward();
  const at::Tensor delta_grad = model->named_parameters()["emb.trainable_tokens_delta.default"].grad();
  EXPECT_TRUE(torch::equal(delta_grad[0], torch::zeros({6})));
  EXPECT_GT(delta_grad[1].abs().sum().item<double>(), 0.0);
}

TEST(TrainableTokens, RefusesLinearWithBiasAndOtherLayers) {
  WarningCapture warnings;
  auto model = emb_model();
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(*tokens_config({{"target_modules", {"emb", "proj"}}}), model);
    ADD_FAILURE() << "a Linear with a bias accepted";
  } catch (const peft::UnsupportedLayerError& e) {
    EXPECT_NE(std::string(e.what()).find("'proj'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bias"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  torch::manual_seed(1);
  ConvNet conv;
  try {
    peft::inject_adapter_in_model(*tokens_config({{"target_modules", {"conv"}}}), conv);
    ADD_FAILURE() << "a Conv2d accepted";
  } catch (const peft::UnsupportedLayerError& e) {
    EXPECT_NE(std::string(e.what()).find("not supported"), std::string::npos) << e.what();
  }
}

TEST(TrainableTokens, OverlappingAdaptersAreRefusedTogether) {
  WarningCapture warnings;
  auto model = emb_model();
  inject_trained(*model, *tokens_config());
  peft::inject_adapter_in_model(*tokens_config({{"token_indices", {5, 6}}}), model, "other");
  peft::set_adapter(model, std::vector<std::string>{"default", "other"});
  EXPECT_THROW(model->forward(ids()), peft::ConfigError);
  const ModelSnapshot before(*model);
  EXPECT_THROW(peft::merge_adapter(*model, {"default", "other"}), peft::MergeError);
  EXPECT_TRUE(ModelSnapshot(*model) == before);
  EXPECT_TRUE(peft::adapter_names(model).size() == 2);
}

INSTANTIATE_TEST_SUITE_P(TrainableTokens, UnsupportedLayers,
                         testing::Values(UnsupportedLayer{"TRAINABLE_TOKENS", "conv1d", {{"token_indices", {1}}}}),
                         UnsupportedLayerName());

// ---------------------------------------------------------------- a head tied to the embedding

TEST(TrainableTokensTied, HeadSharesOneDeltaAndMatchesPython) {
  WarningCapture warnings;
  auto model = tied_model();
  const at::Tensor x = tied_input();
  EXPECT_LT(max_abs_diff(model->forward(x), tied_expected("output_base")), 1e-6);
  // No target_modules: "embed_tokens", as Python picks it; lm_head comes along as it uses the same weight.
  peft::inject_adapter_in_model(peft::TrainableTokensConfig().token_indices({2, 5, 7}), model);
  EXPECT_EQ(peft::targeted_module_names(model), (std::vector<std::string>{"embed_tokens", "lm_head"}));
  const peft::StateDict python = peft::safetensors::load_file((tied_dir() / "tied" / "adapter_model.safetensors").string());
  const peft::LoadResult loaded = peft::set_peft_model_state_dict(*model, python);
  EXPECT_TRUE(loaded.missing_keys.empty());
  EXPECT_TRUE(loaded.unexpected_keys.empty());

  // One delta: the same tensor under both layers' names.
  const auto params = model->named_parameters();
  ASSERT_TRUE(params.contains("embed_tokens.trainable_tokens_delta.default"));
  ASSERT_TRUE(params.contains("lm_head.trainable_tokens_delta.default"));
  EXPECT_TRUE(params["embed_tokens.trainable_tokens_delta.default"].is_same(params["lm_head.trainable_tokens_delta.default"]));
  // Counted once, as Python counts it (its named_parameters() drops duplicates): 3 rows of the hidden size.
  const int64_t hidden = params["embed_tokens.trainable_tokens_delta.default"].size(1);
  EXPECT_EQ(peft::trainable_parameters(model).trainable, 3 * hidden);

  model->train();
  const at::Tensor output = model->forward(x);
  EXPECT_LT(max_abs_diff(output, tied_expected("output")), 1e-5);
  output.square().sum().backward();
  EXPECT_LT(max_abs_diff(params["embed_tokens.trainable_tokens_delta.default"].grad(), tied_expected("delta_grad")), 1e-4);
  model->eval();

  // Python's checkpoint: both keys, the same values; the file and config as Python writes them.
  const peft::StateDict ours = peft::get_peft_model_state_dict(*model);
  EXPECT_EQ(ours.keys(), (std::vector<std::string>{"embed_tokens.trainable_tokens_delta", "lm_head.trainable_tokens_delta"}));
  const fs::path dir = fs::temp_directory_path() / ("peft_tokens_tied_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  peft::save_adapter(*model, dir.string());
  EXPECT_EQ(read_bytes(dir / "adapter_model.safetensors"), read_bytes(tied_dir() / "tied" / "adapter_model.safetensors"));
  json theirs = json::parse(read_bytes(tied_dir() / "tied" / "adapter_config.json"));
  json mine = json::parse(read_bytes(dir / "adapter_config.json"));
  for (json* j : {&theirs, &mine}) j->erase("peft_version"), j->erase("auto_mapping");
  EXPECT_EQ(mine, theirs) << json::diff(theirs, mine).dump(1);
  fs::remove_all(dir);
}

TEST(TrainableTokensTied, LoadMergeUnmergeKeepTheTie) {
  WarningCapture warnings;
  const at::Tensor x = tied_input();
  for (bool low_cpu : {false, true}) {
    auto model = tied_model();
    const ModelSnapshot before(*model);
    peft::LoadAdapterOptions options;
    options.low_cpu_mem_usage = low_cpu;
    const peft::LoadResult result = peft::load_adapter(model, (tied_dir() / "tied").string(), "default", options);
    EXPECT_TRUE(result.missing_keys.empty());
    EXPECT_TRUE(result.unexpected_keys.empty());
    EXPECT_LT(max_abs_diff(model->forward(x), tied_expected("output")), 1e-5) << "low_cpu=" << low_cpu;
    {
      peft::DisabledAdapters off(model);
      EXPECT_LT(max_abs_diff(model->forward(x), tied_expected("output_base")), 1e-6);
    }
    peft::merge_adapter(*model, std::vector<std::string>{}, /*safe_merge=*/true);
    EXPECT_LT(max_abs_diff(model->forward(x), tied_expected("output_merged")), 1e-5);
    EXPECT_TRUE(model->lm_head->weight.is_alias_of(model->embed_tokens->weight));
    EXPECT_TRUE(torch::equal(model->lm_head->weight, model->embed_tokens->weight));
    peft::unmerge_adapter(*model);
    for (const auto& [key, value] : before.values) {
      EXPECT_TRUE(torch::equal(model->named_parameters()[key], value)) << key;
    }
    peft::merge_and_unload(*model);
    EXPECT_TRUE(peft::targeted_module_names(model).empty());
    EXPECT_TRUE(model->lm_head->weight.is_alias_of(model->embed_tokens->weight));
    EXPECT_LT(max_abs_diff(model->forward(x), tied_expected("output_merged")), 1e-5);
  }
}

TEST(TrainableTokensTied, TieThroughTheForwardWeightOnly) {
  // `lm_head->weight = embed_tokens->weight` ties what the forward computes with, so that is what counts.
  WarningCapture warnings;
  auto model = tied_model(/*tie_member_only=*/true);
  peft::load_adapter(model, (tied_dir() / "tied").string());
  EXPECT_EQ(peft::targeted_module_names(model), (std::vector<std::string>{"embed_tokens", "lm_head"}));
  EXPECT_LT(max_abs_diff(model->forward(tied_input()), tied_expected("output")), 1e-5);
  peft::merge_adapter(*model);
  EXPECT_LT(max_abs_diff(model->forward(tied_input()), tied_expected("output_merged")), 1e-5);
}

TEST(TrainableTokensTied, SecondAdapterAndDeletion) {
  WarningCapture warnings;
  auto model = tied_model();
  peft::load_adapter(model, (tied_dir() / "tied").string());
  peft::inject_adapter_in_model(peft::TrainableTokensConfig().token_indices({3}).init_weights(false), model, "other");
  EXPECT_EQ(peft::get_peft_model_state_dict(*model, "other").keys(),
            (std::vector<std::string>{"embed_tokens.trainable_tokens_delta", "lm_head.trainable_tokens_delta"}));
  peft::set_adapter(model, std::vector<std::string>{"default", "other"});
  const at::Tensor both = model->forward(tied_input()).detach().clone();
  peft::merge_adapter(*model);
  EXPECT_LT(max_abs_diff(model->forward(tied_input()), both), 1e-5);
  peft::unmerge_adapter(*model);
  peft::delete_adapter(model, "other");
  EXPECT_LT(max_abs_diff(model->forward(tied_input()), tied_expected("output")), 1e-5);
  EXPECT_FALSE(model->named_parameters().contains("lm_head.trainable_tokens_delta.other"));
  peft::delete_adapter(model, "default");
  EXPECT_TRUE(peft::targeted_module_names(model).empty());
  EXPECT_TRUE(model->lm_head->named_children().is_empty());
  EXPECT_LT(max_abs_diff(model->forward(tied_input()), tied_expected("output_base")), 1e-6);
}

TEST(TrainableTokensTied, TheTiedHeadAloneIsRefused) {
  WarningCapture warnings;
  auto model = tied_model();
  peft::load_adapter(model, (tied_dir() / "tied").string());
  const ModelSnapshot before(*model);
  try {
    peft::inject_adapter_in_model(peft::TrainableTokensConfig().token_indices({1}).target_modules({"lm_head"}), model, "x");
    ADD_FAILURE() << "a second delta for the tied head accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'embed_tokens'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

}  // namespace
}  // namespace peft_test::trainable_tokens_test
