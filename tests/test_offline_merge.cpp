// merge_into_weights: merging Python PEFT's adapters into their base checkpoints without building the
// model reproduces Python's merge_and_unload weights (merged_model*.safetensors) for every vector case.

#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::offline_merge_test {
namespace {

std::vector<std::string> merge_cases() {
  std::vector<std::string> out;
  for (const auto& name : all_cases()) {
    const VectorCase c = VectorCase::load(name);
    if (c.has("merged_model.safetensors") && supported(c.json("adapter_config.json")["peft_type"])) out.push_back(name);
  }
  return out;
}

class OfflineMerge : public testing::TestWithParam<std::string> {};

TEST_P(OfflineMerge, ReproducesPythonsMergedWeights) {
  const VectorCase c = VectorCase::load(GetParam());
  WarningCapture warnings;
  for (const std::string adapter : {"default", "other"}) {
    const std::filesystem::path dir = adapter == "default" ? c.dir : c.dir / "other";
    const std::string merged_file = adapter == "default" ? "merged_model.safetensors" : "merged_model_other.safetensors";
    if (!c.has(merged_file) || !std::filesystem::exists(dir / "adapter_config.json")) continue;
    const auto config = peft::load_config((dir / "adapter_config.json").string());
    const peft::StateDict weights = peft::safetensors::load_file((dir / "adapter_model.safetensors").string());
    const peft::StateDict base = c.tensors("base.safetensors");
    if (peft::adapted_module_names(*config, weights).empty()) {
      // Only tensors the layers share (UniLoRA's theta_d without save_indices): the layers' parts come from the
      // model, so an offline merge is refused.
      EXPECT_THROW(peft::merge_into_weights(*config, weights, base), peft::StateDictError) << adapter;
      continue;
    }
    const peft::OfflineMergeResult result = peft::merge_into_weights(*config, weights, base);
    EXPECT_TRUE(result.modules_not_in_base.empty());
    const peft::StateDict expected = c.tensors(merged_file);
    for (const auto& item : expected) {
      const at::Tensor* ours = result.tensors.find(item.key());
      const at::Tensor& value = ours ? *ours : base[item.key()];
      EXPECT_LT(max_abs_diff(value, item.value()), 1e-6) << adapter << ": " << item.key();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Vectors, OfflineMerge, testing::ValuesIn(merge_cases()), [](const auto& info) { return info.param; });

TEST(OfflineMerge, ScaleInterpolatesTheDelta) {
  const VectorCase c = VectorCase::load("lora_mlp_basic");
  const auto config = peft::load_config((c.dir / "adapter_config.json").string());
  const peft::StateDict weights = peft::safetensors::load_file((c.dir / "adapter_model.safetensors").string());
  const peft::StateDict base = c.tensors("base.safetensors");
  const auto full = peft::merge_into_weights(*config, weights, base);
  const auto half = peft::merge_into_weights(*config, weights, base, {0.5});
  const at::Tensor w = base["lin0.weight"];
  EXPECT_LT(max_abs_diff(half.tensors["lin0.weight"], w + 0.5 * (full.tensors["lin0.weight"] - w)), 1e-6);
}

TEST(OfflineMerge, ReportsModulesTheBaseLacks) {
  const VectorCase c = VectorCase::load("lora_mlp_basic");
  const auto config = peft::load_config((c.dir / "adapter_config.json").string());
  const peft::StateDict weights = peft::safetensors::load_file((c.dir / "adapter_model.safetensors").string());
  peft::StateDict base = c.tensors("base.safetensors");
  base.erase("lin1.weight");
  const auto result = peft::merge_into_weights(*config, weights, base);
  EXPECT_EQ(result.modules_not_in_base, std::vector<std::string>{"lin1"});
  EXPECT_TRUE(result.tensors.contains("lin0.weight"));
}

}  // namespace
}  // namespace peft_test::offline_merge_test
