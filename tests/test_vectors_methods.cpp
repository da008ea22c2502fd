// Parity with Python PEFT for every adapter method besides LoRA: for each case of tests/data/vectors whose
// peft_type peft-cpp supports, load Python's adapter directory into the rebuilt model and compare the
// output, the state dict, the merged weights and outputs, and the files save_adapter writes.

#include <filesystem>
#include <fstream>

#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::vectors_methods_test {
namespace {

namespace fs = std::filesystem;
constexpr double kOutputAtol = 1e-5;
constexpr double kWeightAtol = 1e-6;

std::vector<std::string> method_cases() {
  std::vector<std::string> out;
  for (const auto& type : peft::supported_peft_types()) {
    if (type == "LORA") continue;  // test_vectors_lora.cpp
    for (const auto& name : cases_with_peft_type(type)) out.push_back(name);
  }
  return out;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// Cases of methods routed by task (Poly) hold the task ids their forwards used (task_ids.safetensors): a
/// peft::TaskIds guard with them while the case's forwards run; none for the other cases.
std::unique_ptr<peft::TaskIds> task_ids_guard(const VectorCase& c, torch::nn::Module& model) {
  if (!c.has("task_ids.safetensors")) return nullptr;
  return std::make_unique<peft::TaskIds>(model, c.tensor("task_ids.safetensors", "task_ids"));
}

class MethodVectors : public testing::TestWithParam<std::string> {};

TEST_P(MethodVectors, OutputAndStateDictMatchPython) {
  const VectorCase c = VectorCase::load(GetParam());
  WarningCapture warnings;
  for (bool low_cpu : {false, true}) {
    VectorModel model = base_model(c);
    peft::LoadAdapterOptions options;
    options.low_cpu_mem_usage = low_cpu;
    const peft::LoadResult result = peft::load_adapter(*model, c.dir.string(), "default", options);
    const auto tasks = task_ids_guard(c, *model);
    EXPECT_TRUE(result.missing_keys.empty()) << result.missing_keys.front();
    EXPECT_TRUE(result.unexpected_keys.empty()) << result.unexpected_keys.front();
    EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output.safetensors")), kOutputAtol) << "low_cpu=" << low_cpu;
    const peft::StateDict ours = peft::get_peft_model_state_dict(*model);
    const peft::StateDict theirs = c.tensors("peft_state_dict.safetensors");
    std::vector<std::string> a = ours.keys(), b = theirs.keys();
    std::sort(a.begin(), a.end()), std::sort(b.begin(), b.end());
    EXPECT_EQ(a, b);
    for (const auto& item : theirs) {
      if (const at::Tensor* t = ours.find(item.key())) EXPECT_TRUE(torch::equal(*t, item.value())) << item.key();
    }
  }
}

TEST_P(MethodVectors, DisabledGivesTheBaseOutput) {
  const VectorCase c = VectorCase::load(GetParam());
  WarningCapture warnings;
  VectorModel model = base_model(c);
  peft::load_adapter(*model, c.dir.string());
  peft::DisabledAdapters off(*model);
  EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output_base.safetensors")), kOutputAtol);
}

TEST_P(MethodVectors, MergeMatchesPython) {
  const VectorCase c = VectorCase::load(GetParam());
  WarningCapture warnings;
  VectorModel model = base_model(c);
  peft::load_adapter(*model, c.dir.string());
  const auto tasks = task_ids_guard(c, *model);
  if (!c.has("output_merged.safetensors")) {
    // Python PEFT cannot merge this method either: refused, and nothing changes.
    const ModelSnapshot before(*model);
    EXPECT_THROW(peft::merge_adapter(*model), peft::MergeError);
    EXPECT_TRUE(ModelSnapshot(*model) == before);
    return;
  }
  const at::Tensor unmerged = model->forward(c.input());
  const ModelSnapshot before(*model);
  peft::merge_adapter(*model);
  EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output_merged.safetensors")), kOutputAtol);
  peft::unmerge_adapter(*model);
  EXPECT_LT(max_abs_diff(model->forward(c.input()), unmerged), kOutputAtol);
  for (const auto& [key, value] : before.values) {
    EXPECT_LT(max_abs_diff(model->named_parameters()[key], value), 1e-5) << key;
  }
  peft::merge_and_unload(*model, /*safe_merge=*/true);
  const peft::StateDict merged = c.tensors("merged_model.safetensors");
  const auto params = model->named_parameters();
  EXPECT_EQ(params.size(), merged.size());
  for (const auto& item : merged) {
    const at::Tensor* t = params.find(item.key());
    ASSERT_TRUE(t) << item.key();
    EXPECT_LT(max_abs_diff(*t, item.value()), kWeightAtol) << item.key();
  }
  EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output_merged.safetensors")), kOutputAtol);
}

TEST_P(MethodVectors, SaveWritesPythonsFiles) {
  const VectorCase c = VectorCase::load(GetParam());
  WarningCapture warnings;
  VectorModel model = base_model(c);
  peft::load_adapter(*model, c.dir.string());
  const fs::path out = fs::temp_directory_path() / ("peft_methods_" + std::to_string(::getpid())) / c.name;
  fs::remove_all(out);
  peft::save_adapter(*model, out.string());
  EXPECT_EQ(read_bytes(out / "adapter_model.safetensors"), read_bytes(c.dir / "adapter_model.safetensors"));
  auto comparable = [](const fs::path& file) {
    nlohmann::json j = nlohmann::json::parse(read_bytes(file));
    j.erase("peft_version");
    for (const char* key : {"target_modules", "feedforward_modules"}) {
      if (j.contains(key) && j[key].is_array()) {
        auto t = j[key].get<std::vector<std::string>>();
        std::sort(t.begin(), t.end());
        j[key] = t;
      }
    }
    return j;
  };
  const nlohmann::json ours = comparable(out / "adapter_config.json"), theirs = comparable(c.dir / "adapter_config.json");
  EXPECT_EQ(ours, theirs) << nlohmann::json::diff(theirs, ours).dump(1);
}

INSTANTIATE_TEST_SUITE_P(Vectors, MethodVectors, testing::ValuesIn(method_cases()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace peft_test::vectors_methods_test
