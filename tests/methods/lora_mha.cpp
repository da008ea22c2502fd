// LoRA on torch::nn::MultiheadAttention (Python PEFT's lora.MultiheadAttention), alone and inside a
// torch::nn::TransformerEncoderLayer, against Python PEFT (tests/data/methods/lora_mha/, made by its
// make_reference.py): outputs, a second adapter, merging, checkpoint keys (Python keeps out_proj's adapter under
// "<attention>.base_layer.out_proj"), gradients, and what is refused. MultiheadAttention has no drop-in layer: in a
// build without libpeft_interpose (-DPEFT_INTERPOSE=OFF) adapting one must be refused, which is what the tests
// check there.

#include <unistd.h>

#include <torch/torch.h>

#include <peft/offline_merge.h>
#include <peft/peft.h>

#include "support/errors.h"
#include "support/layers.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::lora_mha_test {
namespace {

namespace fs = std::filesystem;

fs::path data_dir(const std::string& model) { return cases_dir().parent_path() / "methods" / "lora_mha" / model; }

struct EncoderImpl : torch::nn::Module {
  torch::nn::TransformerEncoderLayer enc{torch::nn::TransformerEncoderLayerOptions(8, 2).dim_feedforward(16).dropout(0.0)};
  EncoderImpl() { register_module("enc", enc); }
  at::Tensor forward(const at::Tensor& x) { return enc(x); }
};
TORCH_MODULE(Encoder);

struct AttentionImpl : torch::nn::Module {
  torch::nn::MultiheadAttention attn{torch::nn::MultiheadAttentionOptions(8, 2).bias(true).add_bias_kv(true)};
  AttentionImpl() { register_module("attn", attn); }
  at::Tensor forward(const at::Tensor& x) { return std::get<0>(attn->forward(x, x, x, at::Tensor(), /*need_weights=*/false)); }
};
TORCH_MODULE(Attention);

peft::StateDict expected(const std::string& model) {
  return peft::safetensors::load_file((data_dir(model) / "expected.safetensors").string());
}

template <class Model>
Model base_model(const std::string& name) {
  Model m;
  const peft::StateDict weights = peft::safetensors::load_file((data_dir(name) / "base.safetensors").string());
  const auto params = m->named_parameters();
  EXPECT_EQ(params.size(), weights.size()) << name;
  torch::NoGradGuard no_grad;
  for (const auto& item : weights) params[item.key()].copy_(item.value());
  m->eval();
  return m;
}

// Python's names of the model's adapter tensors: out_proj's adapter under "<attention>.base_layer.out_proj".
std::string python_name(std::string key) {
  const auto pos = key.find(".out_proj.lora_");
  if (pos != std::string::npos) key.replace(pos, std::string(".out_proj").size(), ".base_layer.out_proj");
  return key;
}

// In a build without routing: adapting an attention is refused (RoutingError) and the model is kept. Returns
// whether the test goes on (routed build).
template <class Model>
bool routed_or_refused(Model& m, const std::string& name) {
  if (nn::kRouted) return true;
  EXPECT_THROW(peft::load_adapter(m, data_dir(name).string()), peft::RoutingError);
  EXPECT_TRUE(peft::adapter_names(m).empty());
  return false;
}

TEST(LoraAttention, EncoderLayerMatchesPython) {
  WarningCapture warnings;
  const peft::StateDict e = expected("encoder");
  const at::Tensor x = e["x"];
  Encoder m = base_model<Encoder>("encoder");
  ASSERT_LT(max_abs_diff(m->forward(x), e["output_base"]), 1e-5) << "the base models differ";
  if (!routed_or_refused(m, "encoder")) return;
  peft::load_adapter(m, data_dir("encoder").string());
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(m->forward(x), e["output"]), 1e-5);
  peft::load_adapter(m, data_dir("encoder").string(), "other");
  peft::set_adapter(m, "other");
  EXPECT_LT(max_abs_diff(m->forward(x), e["output_other"]), 1e-5);
  peft::set_adapter(m, "default");
  {
    peft::DisabledAdapters off(m);
    EXPECT_LT(max_abs_diff(m->forward(x), e["output_base"]), 1e-5);
  }
  // Merging adds both deltas (in_proj_weight and out_proj.weight); unmerging restores them.
  peft::merge_adapter(m);
  EXPECT_LT(max_abs_diff(m->forward(x), e["output"]), 1e-5);
  peft::unmerge_adapter(m);
  EXPECT_LT(max_abs_diff(m->forward(x), e["output"]), 1e-5);
  peft::merge_and_unload(m, false, {"default"});
  EXPECT_LT(max_abs_diff(m->forward(x), e["output_merged"]), 1e-5);
  EXPECT_TRUE(peft::adapter_names(m).empty());
  for (const auto& p : m->named_parameters()) {
    EXPECT_LT(max_abs_diff(p.value(), e["merged." + p.key()]), 1e-6) << p.key();
  }
}

TEST(LoraAttention, CheckpointKeysArePythons) {
  WarningCapture warnings;
  Encoder m = base_model<Encoder>("encoder");
  if (!routed_or_refused(m, "encoder")) return;
  peft::load_adapter(m, data_dir("encoder").string());
  const peft::StateDict python =
      peft::safetensors::load_file((data_dir("encoder") / "adapter_model.safetensors").string());
  const peft::StateDict ours = peft::get_peft_model_state_dict(m);
  EXPECT_EQ(ours.size(), python.size());
  for (const auto& item : python) {
    const std::string key = item.key().substr(std::string("base_model.model.").size());
    ASSERT_TRUE(ours.contains(key)) << key;
    EXPECT_TRUE(torch::equal(ours[key], item.value())) << key;
  }
  // The model's own names keep out_proj where it is (base names never change).
  const auto params = m->named_parameters();
  EXPECT_TRUE(params.contains("enc.self_attn.out_proj.lora_A.default.weight"));
  EXPECT_TRUE(params.contains("enc.self_attn.lora_B.default.weight"));
  EXPECT_EQ(params["enc.self_attn.lora_B.default.weight"].sizes(), (std::vector<int64_t>{24, 2}));
  // Saved and loaded again: the same file keys.
  const fs::path dir = fs::temp_directory_path() / ("peft_lora_mha_" + std::to_string(::getpid()));
  peft::save_adapter(m, dir.string());
  const peft::StateDict saved = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
  EXPECT_EQ(saved.keys(), python.keys());
  Encoder fresh = base_model<Encoder>("encoder");
  peft::load_adapter(fresh, dir.string());
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(fresh->forward(expected("encoder")["x"]), expected("encoder")["output"]), 1e-5);
  fs::remove_all(dir);
}

TEST(LoraAttention, GradientsMatchPython) {
  for (const char* name : {"encoder", "attention"}) {
    SCOPED_TRACE(name);
    WarningCapture warnings;
    const peft::StateDict e = expected(name);
    peft::LoadAdapterOptions trainable;
    trainable.is_trainable = true;
    auto run = [&](auto m) {
      if (!routed_or_refused(m, name)) return;
      peft::load_adapter(m, data_dir(name).string(), "default", trainable);
      m->train();
      const at::Tensor y = m->forward(e["x"]);
      const at::Tensor w = torch::linspace(-1, 1, y.numel()).view_as(y);
      (y * w).sum().backward();
      int64_t checked = 0;
      for (const auto& p : m->named_parameters()) {
        const std::string key = "grad." + python_name(p.key());
        if (!e.contains(key)) {
          EXPECT_FALSE(p.value().grad().defined()) << p.key();
          continue;
        }
        ASSERT_TRUE(p.value().grad().defined()) << p.key();
        EXPECT_LT(max_abs_diff(p.value().grad(), e[key]), 1e-5) << p.key();
        ++checked;
      }
      int64_t python_grads = 0;
      for (const auto& item : e) python_grads += item.key().rfind("grad.", 0) == 0;
      EXPECT_EQ(checked, python_grads);
    };
    if (std::string(name) == "encoder") {
      run(base_model<Encoder>(name));
    } else {
      run(base_model<Attention>(name));
    }
  }
}

TEST(LoraAttention, AttentionWithBiasKvMatchesPython) {
  WarningCapture warnings;
  const peft::StateDict e = expected("attention");
  Attention m = base_model<Attention>("attention");
  ASSERT_LT(max_abs_diff(m->forward(e["x"]), e["output_base"]), 1e-5);
  if (!routed_or_refused(m, "attention")) return;
  peft::load_adapter(m, data_dir("attention").string());
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs_diff(m->forward(e["x"]), e["output"]), 1e-5);
  peft::merge_and_unload(m);
  EXPECT_LT(max_abs_diff(m->forward(e["x"]), e["output_merged"]), 1e-5);
}

TEST(LoraAttention, InjectedByConfigTrainsEveryAdapterTensor) {
  // The defect this replaces: target_modules={"out_proj"} was accepted, had no effect, and training failed with
  // "element 0 of tensors does not require grad".
  WarningCapture warnings;
  Encoder m = base_model<Encoder>("encoder");
  if (!routed_or_refused(m, "encoder")) return;
  peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"self_attn", "linear2"}), m);
  m->train();
  const at::Tensor x = expected("encoder")["x"];
  m->forward(x).pow(2).mean().backward();
  for (const auto& p : m->named_parameters()) {
    const bool adapter = p.key().find("lora_") != std::string::npos;
    EXPECT_EQ(p.value().grad().defined(), adapter) << p.key();
  }
  // lora_B starts at zero: the output is the base's; with out_proj's lora_B moved it is not (moved unevenly: a shift
  // shared by every feature would vanish in the LayerNorm after the attention).
  torch::NoGradGuard no_grad;
  m->eval();
  EXPECT_LT(max_abs_diff(m->forward(x), expected("encoder")["output_base"]), 1e-6);
  for (auto& p : m->named_parameters()) {
    if (p.key() == "enc.self_attn.out_proj.lora_B.default.weight") {
      p.value().copy_(torch::linspace(-1, 1, p.value().numel()).view_as(p.value()));
    }
  }
  EXPECT_GT(max_abs_diff(m->forward(x), expected("encoder")["output_base"]), 1e-3);
}

TEST(LoraAttention, DecoderLayerAttentionsBothTrain) {
  // TransformerDecoderLayer calls its self-attention and its cross-attention (multihead_attn) through the routed
  // forward too.
  WarningCapture warnings;
  struct DecoderImpl : torch::nn::Module {
    torch::nn::TransformerDecoderLayer dec{torch::nn::TransformerDecoderLayerOptions(8, 2).dim_feedforward(16).dropout(0.0)};
    DecoderImpl() { register_module("dec", dec); }
  };
  torch::manual_seed(0);
  auto m = std::make_shared<DecoderImpl>();
  const at::Tensor tgt = torch::randn({4, 2, 8}), memory = torch::randn({5, 2, 8});
  const at::Tensor base = m->dec(tgt, memory).detach();
  const auto config = peft::LoraConfig().r(2).init_lora_weights(false).target_modules({"self_attn", "multihead_attn"});
  if (!nn::kRouted) {
    EXPECT_THROW(peft::inject_adapter_in_model(config, m), peft::RoutingError);
    return;
  }
  peft::inject_adapter_in_model(config, m);
  const at::Tensor y = m->dec(tgt, memory);
  EXPECT_GT(max_abs_diff(y, base), 1e-3);
  y.pow(2).mean().backward();
  int64_t adapter_tensors = 0;
  for (const auto& p : m->named_parameters()) {
    const bool adapter = p.key().find("lora_") != std::string::npos;
    adapter_tensors += adapter;
    EXPECT_EQ(p.value().grad().defined(), adapter) << p.key();
  }
  EXPECT_EQ(adapter_tensors, 8);  // A and B on each attention's in_proj and out_proj
}

// peft-cpp merge's path: the attention deltas computed from the files alone give Python's merged weights (in_proj and
// out_proj of the attention, and the encoder's Linear layers), in every build.
TEST(LoraAttention, OfflineMergeGivesPythonsMergedWeights) {
  for (const std::string name : {"encoder", "attention"}) {
    const peft::StateDict adapter = peft::safetensors::load_file((data_dir(name) / "adapter_model.safetensors").string());
    const auto config = peft::load_config((data_dir(name) / "adapter_config.json").string());
    const peft::StateDict base = peft::safetensors::load_file((data_dir(name) / "base.safetensors").string());
    const peft::StateDict want = expected(name);
    const peft::OfflineMergeResult merged = peft::merge_into_weights(*config, adapter, base);
    EXPECT_TRUE(merged.modules_not_in_base.empty()) << name;
    int changed = 0;
    for (const auto& item : base) {
      const at::Tensor* python = want.find("merged." + item.key());
      ASSERT_NE(python, nullptr) << name << ": " << item.key();
      const at::Tensor* ours = merged.tensors.find(item.key());
      if (!ours) {
        EXPECT_LT(max_abs_diff(item.value(), *python), 1e-6) << name << ": " << item.key() << " should have changed";
        continue;
      }
      EXPECT_LT(max_abs_diff(*ours, *python), 1e-5) << name << ": " << item.key();
      ++changed;
    }
    EXPECT_GE(changed, 2) << name << ": in_proj_weight and out_proj.weight at least";
  }
}

TEST(LoraAttention, WhatIsRefused) {
  WarningCapture warnings;
  Encoder m = base_model<Encoder>("encoder");
  expect_error<peft::UnsupportedLayerError>(
      [&] { peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"out_proj"}), m); },
      "Target the attention itself ('enc.self_attn')");
  expect_error<peft::ConfigError>(
      [&] { peft::inject_adapter_in_model(peft::LoraConfig().use_dora(true).target_modules({"self_attn"}), m); },
      "MultiheadAttention does not support DoRA (yet)");
  expect_error<peft::ConfigError>(
      [&] { peft::inject_adapter_in_model(peft::LoraConfig().lora_bias(true).target_modules({"self_attn"}), m); },
      "lora_bias=True is not supported for MultiheadAttention");
  expect_error<peft::UnsupportedLayerError>(
      [&] { peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"linear1"}).modules_to_save({"self_attn"}), m); },
      "is a torch::nn::MultiheadAttention");
  expect_error<peft::UnsupportedLayerError>(
      [&] { peft::inject_adapter_in_model(peft::IA3Config().target_modules({"self_attn"}), m); }, "self_attn");
  struct KdimImpl : torch::nn::Module {
    torch::nn::MultiheadAttention attn{torch::nn::MultiheadAttentionOptions(8, 2).kdim(4).vdim(4)};
    KdimImpl() { register_module("attn", attn); }
  };
  auto kdim = std::make_shared<KdimImpl>();
  expect_error<peft::ConfigError>([&] { peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"attn"}), kdim); },
                                  "Only same embed for query/key/value");
  EXPECT_TRUE(peft::adapter_names(m).empty());
  EXPECT_TRUE(peft::adapter_names(kdim).empty());
}

}  // namespace
}  // namespace peft_test::lora_mha_test
