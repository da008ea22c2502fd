// Every adapter method and its options on small models, beyond what tests/data/vectors covers: the adapter
// changes the output, merging reproduces the unmerged output and unmerging restores the weights, training
// reaches every adapter tensor and no base tensor, save/load (and low_cpu_mem_usage) round-trips, the config
// survives JSON, unsupported layers are refused without changes, and injecting from a state dict adapts the
// layers its keys name.

#include <filesystem>
#include <set>

#include "support/layers.h"
#include "support/method_variants.h"
#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::method_variants_test {
namespace {

namespace fs = std::filesystem;

std::vector<Variant> variants() {
  using nlohmann::json;
  const json mlp_all = {"lin0", "lin1"};
  return {
      {"loha", false, {{"peft_type", "LOHA"}, {"target_modules", mlp_all}, {"r", 4}, {"alpha", 8}, {"init_weights", false}}},
      {"loha_effective_conv", true,
       {{"peft_type", "LOHA"}, {"target_modules", {"conv", "point"}}, {"r", 2}, {"use_effective_conv2d", true}}},
      {"lokr_decompose_both", false,
       {{"peft_type", "LOKR"}, {"target_modules", mlp_all}, {"r", 2}, {"decompose_both", true}, {"decompose_factor", 4}}},
      {"lokr_conv", true, {{"peft_type", "LOKR"}, {"target_modules", {"conv"}}, {"r", 2}, {"use_effective_conv2d", true}}},
      {"ia3", false,
       {{"peft_type", "IA3"}, {"target_modules", mlp_all}, {"feedforward_modules", {"lin1"}}, {"init_ia3_weights", false}}},
      {"ia3_conv", true, {{"peft_type", "IA3"}, {"target_modules", {"conv", "point"}}, {"feedforward_modules", {"point"}}}},
      {"adalora", false,
       {{"peft_type", "ADALORA"}, {"target_modules", mlp_all}, {"init_r", 4}, {"total_step", 10}, {"init_lora_weights", false}}},
      {"adalora_conv", true, {{"peft_type", "ADALORA"}, {"target_modules", {"conv"}}, {"init_r", 3}, {"total_step", 10}}},
      {"oft_exact_cayley", false,
       {{"peft_type", "OFT"}, {"target_modules", mlp_all}, {"oft_block_size", 4}, {"use_cayley_neumann", false},
        {"init_weights", false}}},
      {"oft_block_share", false,
       {{"peft_type", "OFT"}, {"target_modules", mlp_all}, {"oft_block_size", 8}, {"block_share", true}}},
      {"oft_coft", false,
       {{"peft_type", "OFT"}, {"target_modules", mlp_all}, {"r", 4}, {"oft_block_size", 0}, {"coft", true}, {"eps", 0.1}}},
      {"oft_pointwise_conv", true, {{"peft_type", "OFT"}, {"target_modules", {"point"}}, {"oft_block_size", 4}}},
      {"boft_two_factors", false,
       {{"peft_type", "BOFT"}, {"target_modules", mlp_all}, {"boft_block_size", 4}, {"boft_n_butterfly_factor", 2}}},
      {"boft_conv", true, {{"peft_type", "BOFT"}, {"target_modules", {"conv"}}, {"boft_block_size", 4}}},
      {"hra_gram_schmidt", false, {{"peft_type", "HRA"}, {"target_modules", mlp_all}, {"r", 4}, {"apply_GS", true}}},
      {"hra_conv", true, {{"peft_type", "HRA"}, {"target_modules", {"conv"}}, {"r", 3}, {"init_weights", false}}},
      {"fourierft_pattern", false,
       {{"peft_type", "FOURIERFT"}, {"target_modules", mlp_all}, {"n_frequency", 30}, {"scaling", 10.0},
        {"n_frequency_pattern", {{"lin1", 50}}}}},
      {"c3a_gaussian", false,
       {{"peft_type", "C3A"}, {"target_modules", mlp_all}, {"block_size", 8}, {"init_weights", "gaussian"}}},
      {"miss", false, {{"peft_type", "MISS"}, {"target_modules", mlp_all}, {"r", 4}, {"init_weights", false}}},
      {"miss_ragged", false, {{"peft_type", "MISS"}, {"target_modules", mlp_all}, {"r", 5}}},
      {"miss_bat", false, {{"peft_type", "MISS"}, {"target_modules", mlp_all}, {"r", 4}, {"init_weights", "bat"}}},
      {"miss_mini", false,
       {{"peft_type", "MISS"}, {"target_modules", mlp_all}, {"r", 4}, {"mini_r", 4}, {"init_weights", "mini"}}},
      {"ln_tuning", false, {{"peft_type", "LN_TUNING"}, {"target_modules", {"norm"}}}},
  };
}

std::shared_ptr<torch::nn::Module> make_model(const Variant& v) {
  torch::manual_seed(1);
  std::shared_ptr<torch::nn::Module> model =
      v.conv ? std::static_pointer_cast<torch::nn::Module>(ConvNet().ptr()) : Mlp().ptr();
  model->eval();
  return model;
}

at::Tensor run(const Variant& v, torch::nn::Module& model) {
  static const at::Tensor mlp_input = torch::randn({3, 16}, torch::Generator(at::detail::createCPUGenerator(7)));
  static const at::Tensor conv_input = torch::randn({2, 4, 6, 6}, torch::Generator(at::detail::createCPUGenerator(7)));
  if (v.conv) return dynamic_cast<ConvNetImpl&>(model).forward(conv_input);
  return dynamic_cast<MlpImpl&>(model).forward(mlp_input);
}

std::shared_ptr<peft::PeftConfig> config_of(const Variant& v) { return peft::config_from_json_string(v.config.dump()); }

// Injects the variant and moves every adapter tensor away from its (often no-op) initial value.
void inject(const Variant& v, torch::nn::Module& model) {
  peft::inject_adapter_in_model(*config_of(v), model);
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  for (auto& param : model.named_parameters()) {
    if (param.value().requires_grad()) param.value().add_(0.1 * torch::randn_like(param.value()));
  }
}

TEST_P(MethodVariants, AdapterChangesTheOutputAndMergeReproducesIt) {
  const Variant& v = GetParam();
  WarningCapture warnings;
  auto model = make_model(v);
  const at::Tensor base = run(v, *model);
  inject(v, *model);
  const at::Tensor adapted = run(v, *model);
  EXPECT_GT(max_abs_diff(adapted, base), 1e-3) << "the adapter does not reach the output";
  const ModelSnapshot before(*model);
  if (!v.merges) {
    EXPECT_THROW(peft::merge_adapter(*model), peft::MergeError);
    EXPECT_THROW(peft::merge_and_unload(*model), peft::MergeError);
    EXPECT_TRUE(ModelSnapshot(*model) == before);
    EXPECT_LT(max_abs_diff(run(v, *model), adapted), 1e-6);
    return;
  }
  peft::merge_adapter(*model, std::vector<std::string>{}, /*safe_merge=*/true);
  EXPECT_LT(max_abs_diff(run(v, *model), adapted), 1e-4);
  peft::unmerge_adapter(*model);
  for (const auto& [key, value] : before.values) {
    EXPECT_LT(max_abs_diff(model->named_parameters()[key], value), 1e-4) << key;
  }
  EXPECT_LT(max_abs_diff(run(v, *model), adapted), 1e-4);
  peft::merge_and_unload(*model);
  EXPECT_LT(max_abs_diff(run(v, *model), adapted), 1e-4);
  EXPECT_TRUE(peft::targeted_module_names(model).empty()) << "merge_and_unload left adapter layers behind";
}

TEST_P(MethodVariants, TrainingReachesEveryAdapterTensorAndNoBaseTensor) {
  const Variant& v = GetParam();
  WarningCapture warnings;
  auto model = make_model(v);
  inject(v, *model);
  model->train();
  run(v, *model).pow(2).sum().backward();
  const peft::StateDict adapter = peft::get_peft_model_state_dict(*model);
  // By tensor, not by name: a tensor an adapter shares between its layers (VB-LoRA's vector bank) has a name in
  // each of them and one checkpoint key.
  std::set<const c10::TensorImpl*> trained, saved_trained;
  for (const auto& param : model->named_parameters()) {
    const at::Tensor& p = param.value();
    if (!p.requires_grad()) {
      EXPECT_FALSE(p.grad().defined()) << param.key();
      continue;
    }
    trained.insert(p.unsafeGetTensorImpl());
    ASSERT_TRUE(p.grad().defined()) << param.key() << " requires grad but got none";
    EXPECT_TRUE(torch::isfinite(p.grad()).all().item<bool>()) << param.key();
    EXPECT_GT(p.grad().abs().max().item<double>(), 0.0) << param.key();
  }
  // The adapter saves exactly the trained tensors, and besides them only frozen adapter buffers (VeRA's
  // projections).
  std::set<const c10::TensorImpl*> buffers;
  for (const auto& buffer : model->named_buffers()) buffers.insert(buffer.value().unsafeGetTensorImpl());
  for (const auto& item : adapter) {
    if (item.value().requires_grad()) {
      // A row of a trained tensor (TinyLoRA saves its vectors' tensor one row per key) stands for that tensor.
      const at::Tensor& t = item.value();
      const bool row = !trained.count(t.unsafeGetTensorImpl()) && t.is_view() && trained.count(t._base().unsafeGetTensorImpl());
      saved_trained.insert((row ? t._base() : t).unsafeGetTensorImpl());
    } else {
      EXPECT_TRUE(buffers.count(item.value().unsafeGetTensorImpl())) << item.key() << " is saved but neither trained nor a buffer";
    }
  }
  EXPECT_EQ(trained, saved_trained) << "trainable tensors vs. the adapter's state dict";
}

TEST_P(MethodVariants, SaveAndLoadRoundTrip) {
  const Variant& v = GetParam();
  WarningCapture warnings;
  auto model = make_model(v);
  inject(v, *model);
  const at::Tensor adapted = run(v, *model);
  const fs::path dir = fs::temp_directory_path() / ("peft_variants_" + std::to_string(::getpid())) / v.name;
  fs::remove_all(dir);
  peft::save_adapter(*model, dir.string());
  for (bool low_cpu : {false, true}) {
    auto fresh = make_model(v);
    peft::LoadAdapterOptions options;
    options.low_cpu_mem_usage = low_cpu;
    const peft::LoadResult result = peft::load_adapter(fresh, dir.string(), "default", options);
    EXPECT_TRUE(result.missing_keys.empty());
    EXPECT_TRUE(result.unexpected_keys.empty());
    EXPECT_LT(max_abs_diff(run(v, *fresh), adapted), 1e-5) << "low_cpu=" << low_cpu;
  }
  fs::remove_all(dir);
}

TEST_P(MethodVariants, ConfigSurvivesJson) {
  const Variant& v = GetParam();
  WarningCapture warnings;
  const std::string once = config_of(v)->to_json_string();
  const std::string twice = peft::config_from_json_string(once)->to_json_string();
  EXPECT_EQ(once, twice);
}

TEST_P(MethodVariants, StateDictInjectionAdaptsTheLayersItNames) {
  const Variant& v = GetParam();
  WarningCapture warnings;
  auto source = make_model(v);
  inject(v, *source);
  const peft::StateDict weights = peft::get_peft_model_state_dict(*source);
  // The config targets nothing that exists (a regex, so IA3's feedforward_modules need not be a subset):
  // the layers come from the state dict's keys alone.
  nlohmann::json json = v.config;
  json["target_modules"] = "not_a_layer";
  auto model = make_model(v);
  peft::inject_adapter_in_model(*peft::config_from_json_string(json.dump()), model, "default", false, weights);
  peft::set_peft_model_state_dict(*model, weights);
  std::vector<std::string> theirs, ours;
  for (const auto& item : peft::get_peft_model_state_dict(*source)) theirs.push_back(item.key());
  for (const auto& item : peft::get_peft_model_state_dict(*model)) ours.push_back(item.key());
  EXPECT_EQ(ours, theirs);
  EXPECT_LT(max_abs_diff(run(v, *model), run(v, *source)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(All, MethodVariants, testing::ValuesIn(variants()), VariantName());

TEST_P(UnsupportedLayers, AreRefusedAndTheModelIsUnchanged) {
  const UnsupportedLayer& u = GetParam();
  WarningCapture warnings;
  OddLayers model;
  const ModelSnapshot before(*model);
  nlohmann::json json = u.extra;
  json["peft_type"] = u.peft_type;
  json["target_modules"] = {u.layer};
  try {
    peft::inject_adapter_in_model(*peft::config_from_json_string(json.dump()), model);
    ADD_FAILURE() << u.peft_type << " accepted " << u.layer;
  } catch (const peft::UnsupportedLayerError& e) {
    EXPECT_NE(std::string(e.what()).find("not supported"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(u.layer), std::string::npos) << "the message should name the layer: " << e.what();
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

// Which of OddLayers' layers each method cannot adapt (later methods list theirs in tests/methods/<method>.cpp).
INSTANTIATE_TEST_SUITE_P(
    All, UnsupportedLayers,
    testing::Values(UnsupportedLayer{"LOHA", "emb"}, UnsupportedLayer{"LOHA", "conv1d"}, UnsupportedLayer{"LOKR", "emb"},
                    UnsupportedLayer{"IA3", "emb"}, UnsupportedLayer{"ADALORA", "emb", {{"total_step", 10}}},
                    UnsupportedLayer{"OFT", "conv1d", {{"oft_block_size", 4}}}, UnsupportedLayer{"BOFT", "emb"},
                    UnsupportedLayer{"BOFT", "conv1d"}, UnsupportedLayer{"HRA", "emb"}, UnsupportedLayer{"FOURIERFT", "emb"},
                    UnsupportedLayer{"C3A", "emb", {{"block_size", 4}}}, UnsupportedLayer{"C3A", "conv1d", {{"block_size", 4}}},
                    UnsupportedLayer{"MISS", "conv1d"}, UnsupportedLayer{"LN_TUNING", "conv1d"}),
    UnsupportedLayerName());

}  // namespace
}  // namespace peft_test::method_variants_test

// Shared with tests/methods/<method>.cpp (declared in support/method_variants.h).
namespace peft_test {

std::string config_error(const nlohmann::json& adapter_config) {
  try {
    peft::config_from_json_string(adapter_config.dump())->validate();
  } catch (const peft::ConfigError& e) {
    return e.what();
  }
  return "";
}

OneLinear seeded_one_linear(int64_t in, int64_t out, bool bias) {
  torch::manual_seed(0);
  OneLinear model(in, out, bias);
  model->eval();
  return model;
}

void expect_conv1d_matches_linear_form(const peft::PeftConfig& config,
                                       const std::function<void(torch::nn::Module&)>& before_merge) {
  WarningCapture warnings;
  struct ConvModelImpl : torch::nn::Module {
    GPT2Conv1D conv{nullptr};
    ConvModelImpl() { conv = register_module("lin", GPT2Conv1D(8, 6)); }  // in 6, out 8
  };
  torch::manual_seed(0);
  auto conv_model = std::make_shared<ConvModelImpl>();
  OneLinear linear_model(6, 8);
  {
    torch::NoGradGuard no_grad;
    linear_model->lin->weight.copy_(conv_model->conv->weight.t());
    linear_model->lin->bias.copy_(conv_model->conv->bias);
  }
  const at::Tensor x = torch::randn({3, 6});
  torch::manual_seed(4);
  peft::inject_adapter_in_model(config, linear_model);
  torch::manual_seed(4);
  peft::inject_adapter_in_model(config, conv_model);
  EXPECT_TRUE(warnings.contains("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting "
                                "fan_in_fan_out to True."));
  if (before_merge) before_merge(*conv_model);
  const at::Tensor expected = linear_model->forward(x);
  EXPECT_LT(max_abs_diff(conv_model->conv->forward(x), expected), 1e-5);
  peft::merge_and_unload(conv_model);
  EXPECT_LT(max_abs_diff(conv_model->conv->forward(x), expected), 1e-5);
}

}  // namespace peft_test
