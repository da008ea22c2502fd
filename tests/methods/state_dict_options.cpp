// Python PEFT 0.20's state-dict options and helpers against its own results (tests/data/methods/state_dict_options/,
// made by its make_reference.py): ignore_mismatched_sizes, save_embedding_layers, key_mapping,
// get/set_base_model_state_dict and rescale_adapter_scale, with what each refuses (leaving the model unchanged).

#include <torch/torch.h>

#include <fstream>

#include <peft/peft.h>
#include <peft/tuners/lora/rescale.h>

#include "support/errors.h"
#include "support/layers.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::state_dict_options_test {
namespace {

namespace fs = std::filesystem;

fs::path data_dir() { return cases_dir().parent_path() / "methods" / "state_dict_options"; }

const nlohmann::json& reference() {
  static const nlohmann::json ref = nlohmann::json::parse(std::ifstream(data_dir() / "reference.json"));
  return ref;
}

const peft::StateDict& expected() {
  static const peft::StateDict e = peft::safetensors::load_file((data_dir() / "expected.safetensors").string());
  return e;
}

at::Tensor ids() { return peft::safetensors::load_file((data_dir() / "input.safetensors").string())["ids"]; }

// Python's Model: y = lm_head(relu(lin1(relu(lin0(embed_tokens(ids)))))).
struct ModelImpl : torch::nn::Module {
  nn::Embedding embed_tokens{nullptr};
  nn::Linear lin0{6, 8}, lin1{8, 6}, lm_head{nullptr};
  explicit ModelImpl(int64_t vocab = 10) {
    embed_tokens = register_module("embed_tokens", nn::Embedding(vocab, 6));
    register_module("lin0", lin0);
    register_module("lin1", lin1);
    lm_head = register_module("lm_head", nn::Linear(torch::nn::LinearOptions(6, vocab).bias(false)));
  }
  at::Tensor forward(const at::Tensor& x) {
    return lm_head(torch::relu(lin1(torch::relu(lin0(embed_tokens(x))))));
  }
};
TORCH_MODULE(Model);

Model base_model(const std::string& weights = "base.safetensors", int64_t vocab = 10) {
  Model m(vocab);
  const peft::StateDict w = peft::safetensors::load_file((data_dir() / weights).string());
  torch::NoGradGuard no_grad;
  for (auto& p : m->named_parameters()) p.value().copy_(w[p.key()]);
  m->eval();
  return m;
}

at::Tensor run(Model& m) {
  torch::NoGradGuard no_grad;
  return m->forward(ids());
}

void expect_close(const at::Tensor& ours, const std::string& key) {
  ASSERT_TRUE(expected().contains(key)) << key;
  const at::Tensor& theirs = expected()[key];
  ASSERT_EQ(ours.sizes(), theirs.sizes()) << key;
  EXPECT_LT(max_abs_diff(ours, theirs), 1e-5) << key;
}

// Every parameter and buffer (adapters' included) and the adapter names: what a refused call must leave alone.
struct ModelState {
  std::vector<std::string> keys;
  std::vector<at::Tensor> values;
  std::vector<std::string> adapters;
  explicit ModelState(torch::nn::Module& m) {
    for (const auto& p : m.named_parameters()) keys.push_back(p.key()), values.push_back(p.value().clone());
    for (const auto& b : m.named_buffers()) keys.push_back(b.key()), values.push_back(b.value().clone());
    for (const auto& name : peft::adapter_names(m)) adapters.push_back(name);
  }
  void expect_same_as(torch::nn::Module& m) const {
    const ModelState now(m);
    ASSERT_EQ(now.keys, keys);
    EXPECT_EQ(now.adapters, adapters);
    for (size_t i = 0; i < keys.size(); ++i) EXPECT_TRUE(now.values[i].equal(values[i])) << keys[i];
  }
};

std::string strip_prefix(std::string key) {
  const std::string prefix = "base_model.model.";
  return key.rfind(prefix, 0) == 0 ? key.substr(prefix.size()) : key;
}

// Python's missing keys carry the adapter name; peft-cpp's, like the checkpoint's, do not.
std::string without_adapter_name(std::string key) {
  const size_t at = key.find(".default");
  if (at != std::string::npos) key.erase(at, std::string(".default").size());
  return key;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

peft::LoraConfig lora(std::vector<std::string> targets, int64_t r) {
  return peft::LoraConfig().r(r).target_modules(std::move(targets));
}

// ---- ignore_mismatched_sizes

TEST(StateDictOptions, IgnoreMismatchedSizesLeavesOutWhatDoesNotFit) {
  const auto& ref = reference()["ignore_mismatched"];
  const peft::StateDict sd = peft::safetensors::load_file((data_dir() / "adapters" / "ignore.safetensors").string());
  Model m = base_model();
  peft::inject_adapter_in_model(lora({"lin0", "lin1"}, 4).lora_alpha(8), m);
  WarningCapture warnings;
  peft::SetStateDictOptions options;
  options.ignore_mismatched_sizes = true;
  const peft::LoadResult result = peft::set_peft_model_state_dict(m, sd, "default", options);

  // Python's warning, word for word but for the model's class name.
  std::string python_warning = ref["warnings"][0].get<std::string>();
  python_warning.replace(0, std::string("Some weights of Model").size(), "Some weights of " + m->name());
  EXPECT_TRUE(std::find(warnings.messages.begin(), warnings.messages.end(), python_warning) != warnings.messages.end())
      << (warnings.messages.empty() ? std::string("no warning") : warnings.messages.back());
  // The keys and shapes Python's warning lists ("- <key>: found shape torch.Size([2, 8]) in the checkpoint and ...").
  std::vector<std::string> python_lines, ours;
  for (const std::string& line : lines_of(python_warning)) {
    const size_t start = line.find("- ");
    const size_t end = line.find(" in the model instantiated");
    ASSERT_NE(start, std::string::npos) << line;
    python_lines.push_back(line.substr(start, end - start));
  }
  auto shape = [](const std::vector<int64_t>& s) { return "torch.Size(" + ::testing::PrintToString(s) + ")"; };
  for (const auto& k : result.mismatched_keys) {
    std::string text = "- " + k.key + ": found shape " + shape(k.checkpoint_shape) + " in the checkpoint and " + shape(k.model_shape);
    for (const char* from : {"{ ", " }"}) {  // gtest prints { 2, 8 }; torch.Size([2, 8])
      for (size_t at; (at = text.find(from)) != std::string::npos;) text.replace(at, 2, from[0] == '{' ? "[" : "]");
    }
    ours.push_back(text);
  }
  EXPECT_EQ(ours, python_lines);
  EXPECT_EQ(result.mismatched_keys.size(), 3u);
  std::vector<std::string> python_missing;
  for (const auto& k : ref["missing_lora_keys"]) python_missing.push_back(without_adapter_name(k));
  EXPECT_EQ(result.missing_keys, python_missing);
  EXPECT_EQ(result.unexpected_keys, ref["unexpected_keys"].get<std::vector<std::string>>());
  // lin1 keeps its initial (zero-delta) adapter, lin0's adapter is loaded, lin0's bias is the base one.
  expect_close(run(m), "ignore_mismatched.output");
}

TEST(StateDictOptions, MismatchWithoutTheOptionIsRefusedAndChangesNothing) {
  const auto& ref = reference()["ignore_mismatched"];
  const peft::StateDict sd = peft::safetensors::load_file((data_dir() / "adapters" / "ignore.safetensors").string());
  Model m = base_model();
  peft::inject_adapter_in_model(lora({"lin0", "lin1"}, 4).lora_alpha(8), m);
  const ModelState before(*m);
  try {
    peft::set_peft_model_state_dict(m, sd);
    ADD_FAILURE() << "no error";
  } catch (const peft::StateDictError& e) {
    // torch's lines, key for key (torch lists them in module order, peft-cpp in the state dict's).
    const std::vector<std::string> python = lines_of(ref["error_without_option"].get<std::string>());
    for (size_t i = 1; i < python.size(); ++i) {
      EXPECT_NE(std::string(e.what()).find(python[i]), std::string::npos) << python[i] << "\n" << e.what();
    }
  }
  before.expect_same_as(*m);
}

TEST(StateDictOptions, PackedFourBitShapeIsNotIgnoredAsInPython) {
  const peft::StateDict sd = peft::safetensors::load_file((data_dir() / "adapters" / "packed_4bit.safetensors").string());
  Model m = base_model();
  peft::inject_adapter_in_model(lora({"lin0"}, 1), m);
  const ModelState before(*m);
  peft::SetStateDictOptions options;
  options.ignore_mismatched_sizes = true;
  const std::string python = lines_of(reference()["packed_4bit"]["error"].get<std::string>()).at(1);
  expect_error<peft::StateDictError>([&] { peft::set_peft_model_state_dict(m, sd, "default", options); }, python);
  before.expect_same_as(*m);
}

// ---- save_embedding_layers

class EmbeddingLayers : public testing::TestWithParam<std::string> {};

TEST_P(EmbeddingLayers, MatchesPython) {
  const auto& c = reference()["embeddings"][GetParam()];
  const bool transformers_like = GetParam().rfind("tf_", 0) == 0;
  Model m = base_model();
  peft::LoraConfig config = peft::LoraConfig().r(2).init_lora_weights(false);
  const auto& targets = c["target_modules"];
  if (targets.is_array()) {
    config.target_modules(targets.get<std::vector<std::string>>());
  } else if (targets == "all-linear") {
    config.target_modules(peft::TargetModules::all_linear());
  } else {
    config.target_modules(peft::TargetModules::regex(targets.get<std::string>()));
  }
  const std::string prefix = data_dir().string() + "/";
  if (!c["base_model_name_or_path"].is_null()) config.base_model_name_or_path(prefix + c["base_model_name_or_path"].get<std::string>());
  peft::inject_adapter_in_model(config, m);

  peft::PeftStateDictOptions options;
  const auto& mode = c["save_embedding_layers"];
  options.save_embedding_layers = mode.is_string() ? peft::SaveEmbeddingLayers::Auto
                                  : mode.get<bool>() ? peft::SaveEmbeddingLayers::On
                                                     : peft::SaveEmbeddingLayers::Off;
  if (transformers_like) {
    options.input_embeddings = "embed_tokens";
    options.output_embeddings = "lm_head";
  }
  if (!c["vocab_size"].is_null()) options.vocab_size = c["vocab_size"].get<int64_t>();
  WarningCapture warnings;
  const peft::StateDict sd = peft::get_peft_model_state_dict(m, "default", options);
  std::vector<std::string> ours;
  for (std::string w : warnings.messages) {
    if (w.find("embedding") == std::string::npos && w.find("config file") == std::string::npos) continue;
    if (w.find(prefix) != std::string::npos) w.erase(w.find(prefix), prefix.size());
    ours.push_back(w);
  }
  EXPECT_EQ(ours, c["warnings"].get<std::vector<std::string>>());
  EXPECT_EQ(sd.keys(), c["keys"].get<std::vector<std::string>>());
  for (const auto& item : sd) {
    if (item.key().find("lora_") == std::string::npos) expect_close(item.value(), "embeddings." + GetParam() + "." + item.key());
  }
  // save_adapter writes the same keys, prefixed.
  const fs::path out = fs::temp_directory_path() / ("peft_sdopts_" + GetParam());
  fs::remove_all(out);
  peft::save_adapter(m, out.string(), "default", options);
  std::vector<std::string> file_keys;
  for (const auto& item : peft::safetensors::load_file((out / "adapter_model.safetensors").string())) {
    file_keys.push_back(strip_prefix(item.key()));
  }
  std::vector<std::string> sorted = c["keys"].get<std::vector<std::string>>();
  std::sort(sorted.begin(), sorted.end());
  std::sort(file_keys.begin(), file_keys.end());
  EXPECT_EQ(file_keys, sorted);
  fs::remove_all(out);
}

std::vector<std::string> embedding_cases() {
  std::vector<std::string> out;
  for (const auto& item : reference()["embeddings"].items()) out.push_back(item.key());
  return out;
}

INSTANTIATE_TEST_SUITE_P(StateDictOptions, EmbeddingLayers, testing::ValuesIn(embedding_cases()),
                         [](const testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(StateDictOptions, EmbeddingLayerNamedWrongIsAnError) {
  Model m = base_model();
  peft::inject_adapter_in_model(lora({"lin0"}, 2), m);
  peft::PeftStateDictOptions options;
  options.save_embedding_layers = peft::SaveEmbeddingLayers::On;
  options.input_embeddings = "embed";
  expect_error<peft::ConfigError>([&] { peft::get_peft_model_state_dict(m, "default", options); },
                                  "the embedding layer 'embed' (input_embeddings) names no module of the model");
}

TEST(StateDictOptions, AdapterWithEmbeddingLoadsAndSavesAsPython) {
  // Python's file holds embed_tokens' (changed) base weight beside the adapter: loading writes it into the model.
  const fs::path dir = data_dir() / "adapters" / "emb_adapter";
  Model m = base_model();
  const peft::LoadResult result = peft::load_adapter(m, dir.string());
  EXPECT_TRUE(result.unexpected_keys.empty());
  EXPECT_TRUE(result.missing_keys.empty());
  expect_close(run(m), "emb_adapter.output");
  // Saved again with the embedding: the same tensors under the same keys.
  peft::PeftStateDictOptions options;
  options.save_embedding_layers = peft::SaveEmbeddingLayers::On;
  options.input_embeddings = "embed_tokens";
  options.output_embeddings = "lm_head";
  const fs::path out = fs::temp_directory_path() / "peft_sdopts_emb_adapter";
  fs::remove_all(out);
  peft::save_adapter(m, out.string(), "default", options);
  const peft::StateDict ours = peft::safetensors::load_file((out / "adapter_model.safetensors").string());
  const peft::StateDict theirs = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
  EXPECT_EQ(ours.keys(), reference()["emb_adapter"]["file_keys"].get<std::vector<std::string>>());
  ASSERT_EQ(ours.keys(), theirs.keys());
  for (const auto& item : theirs) EXPECT_TRUE(ours[item.key()].equal(item.value())) << item.key();
  fs::remove_all(out);
}

TEST(StateDictOptions, LoadAdapterIgnoresMismatchedSizes) {
  const auto& ref = reference()["resized_adapter"];
  const fs::path dir = data_dir() / "adapters" / "resized_adapter";
  {
    // Without the option: refused (the 12-token embedding does not fit), and the model is as it was.
    Model m = base_model();
    const ModelState before(*m);
    EXPECT_THROW(peft::load_adapter(m, dir.string()), peft::StateDictError);
    before.expect_same_as(*m);
  }
  Model m = base_model();
  peft::LoadAdapterOptions options;
  options.ignore_mismatched_sizes = true;
  WarningCapture warnings;
  const peft::LoadResult result = peft::load_adapter(m, dir.string(), "default", options);
  // Python's warning names PeftModel's keys; the same keys without its base_model.model. prefix.
  std::vector<std::string> python_keys;
  for (const std::string& line : lines_of(ref["warnings"][0].get<std::string>())) {
    const size_t start = line.find("- base_model.model.");
    ASSERT_NE(start, std::string::npos) << line;
    python_keys.push_back(line.substr(start + 19, line.find(':', start) - start - 19));
  }
  std::vector<std::string> ours;
  for (const auto& k : result.mismatched_keys) ours.push_back(k.key);
  EXPECT_EQ(ours, python_keys);
  EXPECT_TRUE(warnings.contains("because you passed `ignore_mismatched_sizes=True`: - embed_tokens.base_layer.weight: "
                                "found shape torch.Size([12, 6]) in the checkpoint and torch.Size([10, 6]) in the model "
                                "instantiated\n- embed_tokens.lora_embedding_A.default: found shape"));
  expect_close(run(m), "resized_adapter.output");
}

// ---- key_mapping

TEST(StateDictOptions, KeyMappingRenamesTheFilesKeys) {
  const auto& ref = reference()["key_mapping"];
  const fs::path dir = data_dir() / "adapters" / "mapped_adapter";
  peft::LoadAdapterOptions options;
  for (const auto& pair : ref["key_mapping"]) options.key_mapping.emplace_back(pair[0], pair[1]);
  {
    Model m = base_model();
    const peft::LoadResult result = peft::load_adapter(m, dir.string(), "default", options);
    EXPECT_TRUE(result.unexpected_keys.empty());
    EXPECT_TRUE(result.missing_keys.empty());
    expect_close(run(m), "key_mapping.output");
  }
  {
    Model m = base_model();
    const peft::LoadResult result = peft::load_adapter(m, dir.string());
    EXPECT_EQ(result.unexpected_keys, ref["file_keys"].get<std::vector<std::string>>());
    expect_close(run(m), "key_mapping.output_without_mapping");
  }
}

TEST(StateDictOptions, KeyMappingRefusesKeysWithoutPrefix) {
  Model m = base_model();
  const ModelState before(*m);
  peft::LoadAdapterOptions options;
  options.key_mapping = {{"^blocks", "lin"}};
  expect_error<peft::FileFormatError>(
      [&] { peft::load_adapter(m, (data_dir() / "adapters" / "unprefixed_adapter").string(), "default", options); },
      "starts with neither 'base_model.model.' nor 'base_model.'");
  before.expect_same_as(*m);
}

TEST(StateDictOptions, KeyMappingWithABadPatternChangesNothing) {
  Model m = base_model();
  const ModelState before(*m);
  peft::LoadAdapterOptions options;
  options.key_mapping = {{"^blocks\\.(\\d)\\.proj", "lin\\2"}};
  expect_error<peft::ConfigError>(
      [&] { peft::load_adapter(m, (data_dir() / "adapters" / "mapped_adapter").string(), "default", options); },
      "invalid group reference 2");
  options.key_mapping = {{"(unclosed", "x"}};
  expect_error<peft::ConfigError>(
      [&] { peft::load_adapter(m, (data_dir() / "adapters" / "mapped_adapter").string(), "default", options); },
      "key_mapping: invalid regular expression '(unclosed'");
  before.expect_same_as(*m);
}

// ---- get/set_base_model_state_dict

Model model_for_base_state_dict() {
  Model m = base_model();
  peft::load_adapter(m, (data_dir() / "adapters" / "base_sd_adapter").string());
  return m;
}

TEST(StateDictOptions, BaseModelStateDictMatchesPython) {
  const auto& ref = reference()["base_state_dict"];
  Model m = model_for_base_state_dict();
  const peft::StateDict sd = peft::get_base_model_state_dict(m);
  EXPECT_EQ(sd.keys(), ref["keys"].get<std::vector<std::string>>());
  for (const auto& item : sd) expect_close(item.value(), "base_sd." + item.key());
}

TEST(StateDictOptions, SetBaseModelStateDictMatchesPython) {
  const auto& ref = reference()["base_state_dict"];
  const peft::StateDict other = peft::safetensors::load_file((data_dir() / "other.safetensors").string());
  Model m = model_for_base_state_dict();
  const peft::StateDict adapter_before = peft::get_peft_model_state_dict(m, "default", {peft::SaveEmbeddingLayers::Off});
  std::vector<at::Tensor> adapter_values;
  for (const auto& item : adapter_before) adapter_values.push_back(item.value().clone());
  const peft::LoadResult result = peft::set_base_model_state_dict(m, other);
  EXPECT_EQ(result.missing_keys, ref["set_missing"].get<std::vector<std::string>>());
  EXPECT_EQ(result.unexpected_keys, ref["set_unexpected"].get<std::vector<std::string>>());
  expect_close(run(m), "base_state_dict.output");
  // Adapter tensors (the modules_to_save copy included) are untouched.
  size_t i = 0;
  for (const auto& item : peft::get_peft_model_state_dict(m, "default", {peft::SaveEmbeddingLayers::Off})) {
    EXPECT_TRUE(item.value().equal(adapter_values[i++])) << item.key();
  }
  // The base weights are now the other ones, under their own names.
  for (const auto& item : peft::get_base_model_state_dict(m)) EXPECT_TRUE(item.value().equal(other[item.key()])) << item.key();
}

TEST(StateDictOptions, SetBaseModelStateDictStrictErrors) {
  const auto& ref = reference()["base_state_dict"];
  const peft::StateDict other = peft::safetensors::load_file((data_dir() / "other.safetensors").string());
  peft::StateDict partial;
  for (const auto& item : other) {
    if (item.key() != "lin1.bias") partial.insert(item.key(), item.value());
  }
  partial.insert("lin7.weight", torch::zeros({1}));
  Model m = model_for_base_state_dict();
  const ModelState before(*m);
  try {
    peft::set_base_model_state_dict(m, partial);
    ADD_FAILURE() << "no error";
  } catch (const peft::StateDictError& e) {
    EXPECT_EQ(std::string(e.what()), ref["strict_error"].get<std::string>());
  }
  before.expect_same_as(*m);
  // A shape that does not fit is refused even when not strict, before anything is written.
  peft::StateDict bad = other;
  bad["lin0.weight"] = torch::zeros({3, 3});
  expect_error<peft::StateDictError>([&] { peft::set_base_model_state_dict(m, bad, /*strict=*/false); },
                                     "size mismatch for lin0.weight: copying a param with shape torch.Size([3, 3])");
  before.expect_same_as(*m);

  const peft::LoadResult result = peft::set_base_model_state_dict(m, partial, /*strict=*/false);
  EXPECT_EQ(result.missing_keys, ref["nonstrict_missing"].get<std::vector<std::string>>());
  EXPECT_EQ(result.unexpected_keys, ref["nonstrict_unexpected"].get<std::vector<std::string>>());
  EXPECT_TRUE(m->lin0->weight.equal(other["lin0.weight"]));
}

// ---- rescale_adapter_scale

TEST(StateDictOptions, RescaleAdapterScaleMatchesPython) {
  Model m = base_model();
  peft::load_adapter(m, (data_dir() / "adapters" / "rescale_adapter").string());
  expect_close(run(m), "rescale.before");
  {
    peft::RescaleAdapterScale guard(m, 0.5);
    expect_close(run(m), "rescale.inside");
  }
  expect_close(run(m), "rescale.after");
  {
    peft::RescaleAdapterScale guard(m, 3);  // an int, as Python accepts
    expect_close(run(m), "rescale.inside_int");
  }
  expect_close(run(m), "rescale.after");
  // Restored when the scope is left by an exception.
  try {
    peft::RescaleAdapterScale guard(m, 0.5);
    expect_close(run(m), "rescale.inside");
    throw std::runtime_error("inside");
  } catch (const std::runtime_error&) {
  }
  expect_close(run(m), "rescale.after");
}

TEST(StateDictOptions, RescaleAdapterScaleRefusesModelsWithoutLora) {
  Model m = base_model();
  peft::inject_adapter_in_model(peft::IA3Config().target_modules({"lin0", "lin1"}), m);
  const ModelState before(*m);
  const at::Tensor y = run(m);
  expect_error<peft::ConfigError>([&] { peft::RescaleAdapterScale guard(m, 0.5); },
                                  reference()["rescale"]["non_lora_error"].get<std::string>());
  before.expect_same_as(*m);
  EXPECT_TRUE(run(m).equal(y));
  Model plain = base_model();
  expect_error<peft::ConfigError>([&] { peft::RescaleAdapterScale guard(plain, 0.5); },
                                  "scaling is only supported for models with `LoraLayer`s");
}

TEST(StateDictOptions, RescaleAdapterScaleCoversAdaLora) {
  // Python's AdaLoraLayer is a LoraLayer: its scaling is multiplied too. One adapted layer, so the delta is linear.
  struct OneImpl : torch::nn::Module {
    nn::Linear lin{6, 4};
    OneImpl() { register_module("lin", lin); }
    at::Tensor forward(const at::Tensor& x) { return lin(x); }
  };
  auto one = std::make_shared<OneImpl>();
  peft::inject_adapter_in_model(peft::AdaLoraConfig().target_modules({"lin"}).init_r(3).total_step(10), *one);
  torch::manual_seed(0);
  peft::StateDict sd;
  for (const auto& item : peft::get_peft_model_state_dict(*one)) sd.insert(item.key(), torch::randn(item.value().sizes()));
  peft::set_peft_model_state_dict(*one, sd);
  one->eval();
  const at::Tensor x = torch::randn({5, 6});
  torch::NoGradGuard no_grad;
  at::Tensor base, full, scaled;
  {
    peft::DisabledAdapters disabled(*one);
    base = one->forward(x);
  }
  full = one->forward(x);
  ASSERT_GT((full - base).abs().max().item<double>(), 1e-3);
  {
    peft::RescaleAdapterScale guard(*one, 0.25);
    scaled = one->forward(x);
  }
  EXPECT_LT(max_abs_diff(scaled - base, 0.25 * (full - base)), 1e-5);
  EXPECT_TRUE(one->forward(x).allclose(full));
}

}  // namespace
}  // namespace peft_test::state_dict_options_test
