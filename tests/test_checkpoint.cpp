// Python PEFT adapter directories both ways: load what Python saved, save what Python would save, and
// never leave a model or a file half-changed.

#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "support/snapshot.h"
#include "support/vector_model.h"
#include "support/vectors.h"
#include "support/warnings.h"

extern char** environ;

namespace peft_test::checkpoint_test {
namespace {

namespace fs = std::filesystem;

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

fs::path scratch(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("peft_checkpoint_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// The config as Python compares it: sets are unordered, and the version names the writer.
nlohmann::json comparable_config(const fs::path& file) {
  nlohmann::json j = nlohmann::json::parse(read_bytes(file));
  j.erase("peft_version");
  if (j["target_modules"].is_array()) {
    auto t = j["target_modules"].get<std::vector<std::string>>();
    std::sort(t.begin(), t.end());
    j["target_modules"] = t;
  }
  return j;
}

class PythonCheckpoints : public testing::TestWithParam<std::string> {};

TEST_P(PythonCheckpoints, LoadThenSaveGivesPythonsFiles) {
  const VectorCase c = VectorCase::load(GetParam());
  WarningCapture warnings;
  VectorModel model = base_model(c);
  std::vector<std::pair<std::string, fs::path>> adapters{{"default", c.dir}};
  if (c.has("other/adapter_config.json")) adapters.push_back({"other", c.dir / "other"});
  for (const auto& [name, dir] : adapters) {
    const peft::LoadResult result = peft::load_adapter(*model, c.dir.string(), name);
    EXPECT_TRUE(result.missing_keys.empty() && result.unexpected_keys.empty()) << name;
    const std::string expected = c.has("output_" + name + ".safetensors") ? "output_" + name + ".safetensors" : "output.safetensors";
    EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor(expected)), 1e-5) << name;
    // Loaded for inference: frozen.
    for (const auto& p : model->parameters()) EXPECT_FALSE(p.requires_grad());
  }
  const fs::path out = scratch(GetParam());
  for (const auto& [name, dir] : adapters) {
    peft::save_adapter(*model, out.string(), name);
    const fs::path written = name == "default" ? out : out / name;
    // The weights file is byte for byte Python's; the config holds the same keys and values.
    EXPECT_EQ(read_bytes(written / "adapter_model.safetensors"), read_bytes(dir / "adapter_model.safetensors")) << name;
    EXPECT_EQ(comparable_config(written / "adapter_config.json"), comparable_config(dir / "adapter_config.json")) << name;
  }
  // And what we wrote loads again into a fresh model with the same result.
  VectorModel again = base_model(c);
  peft::load_adapter(*again, out.string());
  peft::set_adapter(*model, "default");
  EXPECT_TRUE(torch::equal(again->forward(c.input()), model->forward(c.input())));
}

INSTANTIATE_TEST_SUITE_P(Vectors, PythonCheckpoints, testing::ValuesIn(cases_with_peft_type("LORA")),
                         [](const auto& info) { return info.param; });

TEST(Checkpoint, ConfigTextIsPythonsJsonDump) {
  // Python writes json.dumps(indent=2, sort_keys=True): identical text apart from the version line.
  const VectorCase c = VectorCase::load("lora_seed_example");
  VectorModel model = base_model(c);
  peft::load_adapter(*model, c.dir.string());
  const fs::path out = scratch("text");
  peft::save_adapter(*model, out.string());
  auto without_version = [](std::string text) {
    const auto at = text.find("\"peft_version\"");
    return text.erase(at, text.find('\n', at) - at);
  };
  EXPECT_EQ(without_version(read_bytes(out / "adapter_config.json")), without_version(read_bytes(c.dir / "adapter_config.json")));
  const auto ours = nlohmann::json::parse(read_bytes(out / "adapter_config.json"));
  EXPECT_EQ(ours["peft_version"].get<std::string>().rfind("0.20.1.dev0@peft-cpp", 0), 0u);
}

TEST(Checkpoint, DtypesConvertOnLoadAndAreKeptOnSave) {
  const VectorCase c = VectorCase::load("lora_mlp_basic");
  WarningCapture warnings;
  // A float32 checkpoint into a bfloat16 model: the adapter stays float32 by default (Python's autocast).
  VectorModel bf16 = base_model(c);
  bf16->to(torch::kBFloat16);
  peft::load_adapter(*bf16, c.dir.string());
  EXPECT_EQ(bf16->named_parameters()["lin0.lora_A.default.weight"].scalar_type(), torch::kFloat);
  const at::Tensor out = bf16->forward(c.input().to(torch::kBFloat16));
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  EXPECT_LT(max_abs_diff(out.to(torch::kFloat), c.tensor("output.safetensors")), 5e-2);
  // Without autocast, or with an explicit dtype, the adapter takes that dtype; saving keeps it.
  VectorModel half = base_model(c);
  peft::LoadAdapterOptions options;
  options.dtype = torch::kHalf;
  peft::load_adapter(*half, c.dir.string(), "default", options);
  EXPECT_EQ(half->named_parameters()["lin0.lora_A.default.weight"].scalar_type(), torch::kHalf);
  const fs::path out_dir = scratch("half");
  peft::save_adapter(*half, out_dir.string());
  EXPECT_EQ(peft::safetensors::load_file((out_dir / "adapter_model.safetensors").string())
                ["base_model.model.lin0.lora_A.weight"].scalar_type(), torch::kHalf);
  // A float16 checkpoint into a float32 model.
  VectorModel f32 = base_model(c);
  peft::load_adapter(*f32, out_dir.string());
  EXPECT_EQ(f32->named_parameters()["lin0.lora_A.default.weight"].scalar_type(), torch::kFloat);
  EXPECT_LT(max_abs_diff(f32->forward(c.input()), c.tensor("output.safetensors")), 1e-2);
}

TEST(Checkpoint, LowCpuMemUsageAdoptsTheMappedTensors) {
  const VectorCase c = VectorCase::load("lora_llama_layers_to_transform");
  VectorModel model = base_model(c);
  peft::LoadAdapterOptions options;
  options.low_cpu_mem_usage = true;
  peft::load_adapter(*model, c.dir.string(), "default", options);
  EXPECT_LT(max_abs_diff(model->forward(c.input()), c.tensor("output.safetensors")), 1e-5);
  for (const auto& p : model->parameters()) EXPECT_FALSE(p.device().is_meta());
}

TEST(Checkpoint, TrainableLoadsTrain) {
  const VectorCase c = VectorCase::load("lora_mlp_basic");
  VectorModel model = base_model(c);
  peft::LoadAdapterOptions options;
  options.is_trainable = true;
  peft::load_adapter(*model, c.dir.string(), "default", options);
  EXPECT_TRUE(model->named_parameters()["lin0.lora_A.default.weight"].requires_grad());
  EXPECT_FALSE(model->named_parameters()["lin0.weight"].requires_grad());
}

ino_t inode(const fs::path& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

void write(const fs::path& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

TEST(Checkpoint, BadDirectoriesChangeNothing) {
  const VectorCase c = VectorCase::load("lora_mlp_basic");
  WarningCapture warnings;
  VectorModel model = base_model(c);
  const ModelSnapshot before(*model);
  const std::string config = read_bytes(c.dir / "adapter_config.json");
  const std::string weights = read_bytes(c.dir / "adapter_model.safetensors");
  struct Case {
    std::string what, config, weights, expected;
  };
  nlohmann::json wrong_rank = nlohmann::json::parse(config);
  wrong_rank["r"] = 16;
  nlohmann::json unsupported = nlohmann::json::parse(config);
  unsupported["use_qalora"] = true;
  std::string truncated = weights.substr(0, weights.size() - 7);
  std::string bad_header = weights;
  bad_header[8] = '[';
  const std::vector<Case> cases{
      {"truncated weights", config, truncated, "safetensors"},
      {"corrupt header", config, bad_header, "does not start with"},
      {"rank differs from the weights", wrong_rank.dump(), weights, "the config gives [16, 10]"},
      {"unsupported config value", unsupported.dump(), weights, "use_qalora"},
      {"config is not JSON", "{oops", weights, "not valid JSON"},
  };
  for (const Case& k : cases) {
    const fs::path dir = scratch("bad");
    write(dir / "adapter_config.json", k.config);
    write(dir / "adapter_model.safetensors", k.weights);
    try {
      peft::load_adapter(*model, dir.string());
      ADD_FAILURE() << k.what << ": loaded";
    } catch (const peft::Error& e) {
      EXPECT_NE(std::string(e.what()).find(k.expected), std::string::npos) << k.what << ": " << e.what();
    }
    EXPECT_TRUE(ModelSnapshot(*model) == before) << k.what;
  }
  EXPECT_THROW(peft::load_adapter(*model, "/nonexistent/adapter"), peft::FileFormatError);
  const fs::path pickled = scratch("pickled");
  write(pickled / "adapter_config.json", config);
  write(pickled / "adapter_model.bin", "PK");
  try {
    peft::load_adapter(*model, pickled.string());
    FAIL();
  } catch (const peft::FileFormatError& e) {
    EXPECT_NE(std::string(e.what()).find("pickled"), std::string::npos);
  }
  EXPECT_TRUE(ModelSnapshot(*model) == before);
}

TEST(Checkpoint, SaveRefusesWhatItCannotWriteWithoutTouchingFiles) {
  const VectorCase c = VectorCase::load("lora_mlp_basic");
  VectorModel model = base_model(c);
  peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), model, "default",
                                /*low_cpu_mem_usage=*/true);  // meta tensors: nothing to save
  const fs::path out = scratch("refused");
  EXPECT_THROW(peft::save_adapter(*model, out.string()), peft::FileFormatError);
  EXPECT_TRUE(fs::is_empty(out));
  EXPECT_THROW(peft::save_adapter(*model, out.string(), "missing"), peft::AdapterNameError);
}

TEST(Checkpoint, InterruptedSavesLeaveTheOldFileIntact) {
  // A child process saves two alternating versions of a large file in a loop; killing it at random moments
  // must always leave one complete, loadable version.
  const fs::path dir = scratch("killed");
  const fs::path file = dir / "adapter_model.safetensors";
  std::mt19937 rng(7);
  int killed_while_writing = 0;
  for (int round = 0; round < 12; ++round) {
    std::string size = "4000000";
    std::vector<char*> argv{const_cast<char*>(PEFT_SAVE_LOOP_BINARY), const_cast<char*>(file.c_str()), size.data(), nullptr};
    pid_t pid = 0;
    ASSERT_EQ(posix_spawn(&pid, PEFT_SAVE_LOOP_BINARY, nullptr, nullptr, argv.data(), environ), 0);
    // Let it complete one save (the rename gives the file a new inode), then kill it inside a later one.
    const ino_t before = inode(file);
    while (inode(file) == before) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(5, 80)(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    for (const auto& entry : fs::directory_iterator(dir)) killed_while_writing += entry.path() != file;
    const peft::StateDict sd = peft::safetensors::load_file(file.string());
    ASSERT_EQ(sd.size(), 1u);
    const at::Tensor& t = sd["w"];
    EXPECT_EQ(t.numel(), 4000000);
    const float v = t[0].item<float>();
    EXPECT_TRUE(v == 1.0f || v == 2.0f);
    EXPECT_TRUE(torch::equal(t, torch::full_like(t, v)));  // one whole version, never a mix
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path() != file) fs::remove(entry.path());  // a killed writer's temporary file
    }
  }
  // Most kills land inside a write (the temporary file is still there): the test exercised what it claims.
  EXPECT_GT(killed_while_writing, 0);
}

}  // namespace
}  // namespace peft_test::checkpoint_test
