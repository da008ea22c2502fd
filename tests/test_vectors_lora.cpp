// Parity with Python PEFT for every LoRA case in tests/data/vectors: rebuild the model, load its base
// weights, inject from adapter_config.json, load adapter_model.safetensors, and compare the outputs and
// the adapter state dict with what Python PEFT computed.

#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::vectors_lora_test {
namespace {

constexpr double kAtol = 1e-5;

struct Variant {
  std::string case_name;
  LayerStyle style;
  bool low_cpu_mem_usage;
};

void PrintTo(const Variant& v, std::ostream* os) {
  *os << v.case_name << (v.style == LayerStyle::Peft ? " (peft layers)" : " (torch layers)")
      << (v.low_cpu_mem_usage ? " low_cpu_mem_usage" : "");
}

std::string variant_name(const testing::TestParamInfo<Variant>& info) {
  return info.param.case_name + (info.param.style == LayerStyle::Peft ? "_peft_layers" : "_torch_layers") +
         (info.param.low_cpu_mem_usage ? "_low_cpu" : "");
}

std::vector<Variant> all_variants() {
  std::vector<Variant> out;
  for (const auto& name : cases_with_peft_type("LORA")) {
    // torch::nn layers where this build routes their calls; the drop-ins everywhere.
    if (kDefaultStyle == LayerStyle::Torch) {
      out.push_back({name, LayerStyle::Torch, false});
      out.push_back({name, LayerStyle::Torch, true});
    } else {
      out.push_back({name, LayerStyle::Peft, true});
    }
    out.push_back({name, LayerStyle::Peft, false});
  }
  return out;
}

void expect_state_dict_equal(const peft::StateDict& actual, const peft::StateDict& expected) {
  std::vector<std::string> a = actual.keys(), e = expected.keys();
  std::sort(a.begin(), a.end());
  std::sort(e.begin(), e.end());
  EXPECT_EQ(a, e);
  for (const auto& item : expected) {
    const at::Tensor* t = actual.find(item.key());
    if (!t) continue;
    EXPECT_TRUE(torch::equal(*t, item.value())) << item.key();
  }
}

bool any_meta(const torch::nn::Module& model) {
  for (const auto& p : model.parameters()) {
    if (p.device().is_meta()) return true;
  }
  return false;
}

class LoraVectors : public testing::TestWithParam<Variant> {};

TEST_P(LoraVectors, MatchesPythonPeft) {
  const Variant& v = GetParam();
  const VectorCase c = VectorCase::load(v.case_name);
  WarningCapture warnings;
  VectorModel model(c.model, v.style);
  model->load_base(c.tensors("base.safetensors"));
  model->eval();
  const at::Tensor x = c.input();
  ASSERT_LT(max_abs_diff(model->forward(x), c.tensor("output_base.safetensors")), kAtol) << "rebuilt base model";

  // Two-adapter cases: "default" first, then "other"; each is active right after its injection.
  std::vector<std::pair<std::string, std::string>> adapters{{"default", ""}};
  if (c.has("other/adapter_config.json")) adapters.push_back({"other", "other/"});
  for (const auto& [name, sub] : adapters) {
    auto config = peft::load_config((c.dir / (sub + "adapter_config.json")).string());
    peft::inject_adapter_in_model(*config, model, name, v.low_cpu_mem_usage);
    EXPECT_EQ(any_meta(*model), v.low_cpu_mem_usage);
    const peft::LoadResult loaded = peft::set_peft_model_state_dict(
        *model, c.tensors(sub + "adapter_model.safetensors"), name, v.low_cpu_mem_usage);
    EXPECT_TRUE(loaded.unexpected_keys.empty()) << loaded.unexpected_keys.front();
    EXPECT_TRUE(loaded.missing_keys.empty()) << loaded.missing_keys.front();
    EXPECT_FALSE(any_meta(*model));

    const std::string expected = c.has("output_" + name + ".safetensors") ? "output_" + name + ".safetensors"
                                                                           : "output.safetensors";
    EXPECT_LT(max_abs_diff(model->forward(x), c.tensor(expected)), kAtol) << "adapter " << name;

    const std::string reference = name == "default" ? "peft_state_dict.safetensors" : "peft_state_dict_" + name + ".safetensors";
    expect_state_dict_equal(peft::get_peft_model_state_dict(*model, name), c.tensors(reference));
  }
}

INSTANTIATE_TEST_SUITE_P(Vectors, LoraVectors, testing::ValuesIn(all_variants()), variant_name);

TEST(LoraVectorsIndex, CoversEveryLoraCase) {
  // The parametrised suite above must not silently shrink: the vectors hold 21 LoRA cases.
  EXPECT_GE(cases_with_peft_type("LORA").size(), 21u);
}

// Python PEFT draws a LoRA adapter's initial values from the global generator (nn.Linear's init of lora_A,
// then lora_B, layer by layer); peft-cpp draws the same, so the same seed gives Python's adapter. The
// vectors were injected right after torch.manual_seed(1234) with init_lora_weights=False and not perturbed.
TEST(LoraVectorsSeed, SameSeedGivesPythonsInitialAdapter) {
  int checked = 0;
  for (const std::string& name : cases_with_peft_type("LORA")) {
    const VectorCase c = VectorCase::load(name);
    const nlohmann::json config = c.json("adapter_config.json");
    const bool perturbed = c.meta.contains("perturbed") && !c.meta["perturbed"].empty();
    if (perturbed || config["init_lora_weights"] != false || c.has("other/adapter_config.json") || config["use_dora"] == true) {
      continue;
    }
    WarningCapture warnings;
    VectorModel model = base_model(c);
    torch::manual_seed(1234);
    peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), model);
    const peft::StateDict ours = peft::get_peft_model_state_dict(*model);
    for (const auto& item : c.tensors("peft_state_dict.safetensors")) {
      const at::Tensor* t = ours.find(item.key());
      ASSERT_TRUE(t) << name << ": " << item.key();
      EXPECT_TRUE(torch::equal(*t, item.value())) << name << ": " << item.key();
    }
    ++checked;
  }
  EXPECT_GE(checked, 5);
}

}  // namespace
}  // namespace peft_test::vectors_lora_test
