// The peft-cpp binary end to end: merges reproduce Python's merged weights (single files, shards, several
// adapters, dtypes), inspect and convert report and rewrite adapters, and bad input gives one clear line,
// exit code 1 and no output files.

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <torch/csrc/jit/serialization/import.h>

#include "support/vectors.h"

#ifndef PEFT_CLI_BINARY
#error "PEFT_CLI_BINARY must name the peft-cpp binary"
#endif

namespace peft_test {
namespace {

namespace fs = std::filesystem;

struct CliRun {
  int code;
  std::string out, err;
};

CliRun run(const std::string& args) {
  static int counter = 0;
  const fs::path err_file = fs::temp_directory_path() / ("peft_cli_err_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  const std::string command = std::string(PEFT_CLI_BINARY) + " " + args + " 2>" + err_file.string();
  CliRun r{0, "", ""};
  FILE* pipe = ::popen(command.c_str(), "r");
  std::array<char, 4096> buffer{};
  while (size_t n = std::fread(buffer.data(), 1, buffer.size(), pipe)) r.out.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_file);
  r.err.assign(std::istreambuf_iterator<char>(err), {});
  fs::remove(err_file);
  return r;
}

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

class Scratch {
 public:
  Scratch() : dir_(fs::temp_directory_path() / ("peft_cli_" + std::to_string(::getpid()) + "_" + std::to_string(next_++))) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  ~Scratch() { fs::remove_all(dir_); }
  fs::path operator/(const std::string& name) const { return dir_ / name; }
  const fs::path& path() const { return dir_; }
  bool has_partial_leftovers() const {
    for (const auto& e : fs::directory_iterator(dir_)) {
      if (e.path().filename().string().find(".partial-") != std::string::npos) return true;
    }
    return false;
  }

 private:
  static inline int next_ = 0;
  fs::path dir_;
};

void expect_matches(const peft::StateDict& ours, const peft::StateDict& base, const peft::StateDict& expected,
                    const std::string& what) {
  EXPECT_EQ(ours.size(), base.size()) << what;
  for (const auto& item : expected) {
    const at::Tensor* t = ours.find(item.key());
    ASSERT_TRUE(t) << what << ": " << item.key();
    EXPECT_LT(max_abs_diff(*t, item.value()), 1e-6) << what << ": " << item.key();
  }
}

std::vector<std::string> merge_cases() {
  std::vector<std::string> out;
  for (const auto& name : all_cases()) {
    const VectorCase c = VectorCase::load(name);
    if (c.has("merged_model.safetensors") && supported(c.json("adapter_config.json")["peft_type"])) out.push_back(name);
  }
  return out;
}

class CliMerge : public testing::TestWithParam<std::string> {};

TEST_P(CliMerge, ReproducesPythonsMergedModel) {
  const VectorCase c = VectorCase::load(GetParam());
  Scratch scratch;
  const CliRun r = run("merge --base " + q(c.dir / "base.safetensors") + " --adapter " + q(c.dir) + " --out " +
                    q(scratch / "merged.safetensors"));
  const auto config = peft::load_config((c.dir / "adapter_config.json").string());
  if (peft::adapted_module_names(*config, peft::safetensors::load_file((c.dir / "adapter_model.safetensors").string()))
          .empty()) {
    // Only tensors the layers share (UniLoRA's theta_d without save_indices): refused, the model is needed.
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("names no layer"), std::string::npos) << r.err;
    return;
  }
  ASSERT_EQ(r.code, 0) << r.err;
  const peft::StateDict ours = peft::safetensors::load_file((scratch / "merged.safetensors").string());
  const peft::StateDict base = c.tensors("base.safetensors");
  expect_matches(ours, base, c.tensors("merged_model.safetensors"), c.name);
  // Tensors no adapter touches are copied bit for bit.
  const peft::StateDict merged = c.tensors("merged_model.safetensors");
  for (const auto& item : base) {
    if (torch::equal(item.value(), merged[item.key()])) EXPECT_TRUE(torch::equal(ours[item.key()], item.value())) << item.key();
  }
  EXPECT_EQ(peft::safetensors::load_metadata((scratch / "merged.safetensors").string()),
            peft::safetensors::load_metadata((c.dir / "base.safetensors").string()));
}

INSTANTIATE_TEST_SUITE_P(Vectors, CliMerge, testing::ValuesIn(merge_cases()), [](const auto& info) { return info.param; });

TEST(Cli, MergesSeveralAdaptersWithScales) {
  const VectorCase c = VectorCase::load("lora_two_adapters");
  Scratch scratch;
  // "other" at scale 0 leaves the merge of "default" alone.
  CliRun r = run("merge --base " + q(c.dir / "base.safetensors") + " --adapter " + q(c.dir) + " --adapter " +
              q(c.dir / "other") + " --scale 1 --scale 0 --out " + q(scratch / "a.safetensors"));
  ASSERT_EQ(r.code, 0) << r.err;
  const peft::StateDict base = c.tensors("base.safetensors");
  expect_matches(peft::safetensors::load_file((scratch / "a.safetensors").string()), base,
                 c.tensors("merged_model.safetensors"), "default only");
  // Both at full scale: the deltas add up.
  r = run("merge --base " + q(c.dir / "base.safetensors") + " --adapter " + q(c.dir) + " --adapter " + q(c.dir / "other") +
          " --out " + q(scratch / "b.safetensors"));
  ASSERT_EQ(r.code, 0) << r.err;
  const peft::StateDict both = peft::safetensors::load_file((scratch / "b.safetensors").string());
  const peft::StateDict d = c.tensors("merged_model.safetensors"), o = c.tensors("merged_model_other.safetensors");
  for (const auto& item : base) {
    const at::Tensor expected = d[item.key()] + o[item.key()] - item.value();
    EXPECT_LT(max_abs_diff(both[item.key()], expected), 1e-5) << item.key();
  }
}

// A sharded base: the vectors' base split over two files with an index, plus a config.json.
fs::path write_sharded(const VectorCase& c, const fs::path& dir) {
  fs::create_directories(dir);
  const peft::StateDict base = c.tensors("base.safetensors");
  peft::StateDict first, second;
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  size_t i = 0;
  for (const auto& item : base) {
    const bool in_first = (i++ % 2) == 0;
    (in_first ? first : second).insert(item.key(), item.value());
    index["weight_map"][item.key()] = in_first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  peft::safetensors::save_file(first, (dir / "model-00001-of-00002.safetensors").string(), {{"format", "pt"}});
  peft::safetensors::save_file(second, (dir / "model-00002-of-00002.safetensors").string(), {{"format", "pt"}});
  std::ofstream(dir / "model.safetensors.index.json") << index.dump(2);
  std::ofstream(dir / "config.json") << "{\"model_type\": \"test\"}\n";
  return dir;
}

TEST(Cli, MergesShardedCheckpointsKeepingTheSharding) {
  const VectorCase c = VectorCase::load("lora_llama_layers_to_transform");
  Scratch scratch;
  const fs::path base_dir = write_sharded(c, scratch / "base");
  const CliRun r = run("merge --base " + q(base_dir) + " --adapter " + q(c.dir) + " --out " + q(scratch / "out") + " --dtype bf16");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(scratch / "out" / "config.json"));
  const nlohmann::json index = nlohmann::json::parse(std::ifstream(scratch / "out" / "model.safetensors.index.json"));
  const nlohmann::json original = nlohmann::json::parse(std::ifstream(base_dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"], original["weight_map"]);
  peft::StateDict ours;
  uint64_t bytes = 0;
  for (const char* shard : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    for (const auto& item : peft::safetensors::load_file((scratch / "out" / shard).string())) {
      EXPECT_EQ(item.value().scalar_type(), at::kBFloat16) << item.key();
      EXPECT_EQ(index["weight_map"][item.key()], shard) << item.key();
      bytes += item.value().numel() * item.value().element_size();
      ours.insert(item.key(), item.value().to(at::kFloat));
    }
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), bytes);
  for (const auto& item : c.tensors("merged_model.safetensors")) {
    EXPECT_LT(max_abs_diff(ours[item.key()], item.value().to(at::kBFloat16).to(at::kFloat)), 1e-6) << item.key();
  }
}

// A TorchScript base: the adapter is merged on the model and a .pt any LibTorch program loads comes out.
TEST(Cli, MergesIntoATorchScriptModel) {
  const fs::path data = cases_dir().parent_path() / "torchscript" / "gpt2_small";
  Scratch scratch;
  CliRun r = run("merge --base " + q(data / "scripted.pt") + " --adapter " + q(data / "lora") + " --out " +
                 q(scratch / "merged.pt"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(scratch.has_partial_leftovers());
  torch::jit::Module merged = torch::jit::load((scratch / "merged.pt").string());
  merged.eval();
  torch::NoGradGuard no_grad;
  const at::Tensor ids = peft::safetensors::load_file((data / "input.safetensors").string())["x"];
  const at::Tensor expected = peft::safetensors::load_file((data / "lora" / "output.safetensors").string())["output"];
  EXPECT_LT(max_abs_diff(merged.forward({ids}).toTensor(), expected), 1e-5);
  r = run("merge --base " + q(data / "scripted.pt") + " --adapter " + q(data / "lora") + " --scale 0.5 --out " +
          q(scratch / "scaled.pt"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--scale"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(scratch / "scaled.pt"));
}

TEST(Cli, InspectDescribesTheAdapter) {
  const VectorCase c = VectorCase::load("lora_mlp_rank_alpha_pattern");
  CliRun r = run("inspect " + q(c.dir));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("method:      LORA"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("warning"), std::string::npos) << r.out;
  r = run("inspect --json " + q(c.dir));
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json report = nlohmann::json::parse(r.out);
  EXPECT_EQ(report["method"], "LORA");
  const nlohmann::json config = c.json("adapter_config.json");
  // Every module's rank and alpha as the patterns give them.
  int64_t modules = 0;
  for (const auto& group : report["ranks"]) modules += group["modules"].size();
  EXPECT_EQ(report["module_count"].get<int64_t>(), modules);
  EXPECT_GT(report["ranks"].size(), 1u) << "rank_pattern gives different ranks: " << report.dump();
  int64_t params = 0;
  for (const auto& item : c.tensors("adapter_model.safetensors")) params += item.value().numel();
  EXPECT_EQ(report["parameters"].get<int64_t>(), params);
}

// An X-LoRA directory holds the classifier; its experts are LoRA directories the config names. Nothing to merge.
TEST(Cli, InspectAndMergeOfAnXLoraAdapter) {
  const fs::path dir = cases_dir().parent_path() / "methods" / "xlora" / "layerwise_topk";
  CliRun r = run("inspect " + q(dir));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("method:      XLORA"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("experts:     3 LoRA adapters"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("warning"), std::string::npos) << r.out;
  Scratch scratch;
  r = run("merge --base " + q(dir.parent_path() / "base.safetensors") + " --adapter " + q(dir) + " --out " +
          q(scratch / "merged.safetensors"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("XLORA adapters cannot be merged"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(scratch / "merged.safetensors"));
}

TEST(Cli, MergesAttentionAdaptersAsPython) {
  const fs::path dir = cases_dir().parent_path() / "methods" / "lora_mha" / "encoder";
  Scratch scratch;
  const CliRun r = run("merge --base " + q(dir / "base.safetensors") + " --adapter " + q(dir) + " --out " +
                       q(scratch / "merged.safetensors"));
  ASSERT_EQ(r.code, 0) << r.err;
  const peft::StateDict merged = peft::safetensors::load_file((scratch / "merged.safetensors").string());
  const peft::StateDict python = peft::safetensors::load_file((dir / "expected.safetensors").string());
  int checked = 0;
  for (const auto& item : merged) {
    const at::Tensor* want = python.find("merged." + item.key());
    ASSERT_NE(want, nullptr) << item.key();
    EXPECT_LT((item.value() - *want).abs().max().item<double>(), 1e-5) << item.key();
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(peft::safetensors::load_file((dir / "base.safetensors").string()).size()));
}

// LoRA with trainable_token_indices: inspect names the token layers (no "unknown key" warning); merge refuses with the
// way to merge on the model instead of calling the deltas missing base tensors.
TEST(Cli, TrainableTokensAreInspectedAndMergeIsRefused) {
  const fs::path dir = cases_dir().parent_path() / "methods" / "lora_tokens" / "dict_untied";
  CliRun r = run("inspect " + q(dir));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("tokens:      embed_tokens (2 rows) lm_head (3 rows)"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("warning"), std::string::npos) << r.out;
  Scratch scratch;
  r = run("merge --base " + q(dir.parent_path() / "base_untied.safetensors") + " --adapter " + q(dir) + " --out " +
          q(scratch / "merged.safetensors"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("merge it on the model"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(scratch / "merged.safetensors"));
}

TEST(Cli, InspectWarnsAboutInconsistentShapes) {
  const VectorCase c = VectorCase::load("lora_mlp_basic");
  Scratch scratch;
  fs::copy_file(c.dir / "adapter_config.json", scratch / "adapter_config.json");
  peft::StateDict weights = c.tensors("adapter_model.safetensors");
  weights["base_model.model.lin0.lora_B.weight"] = torch::zeros({20, 3});
  peft::safetensors::save_file(weights, (scratch / "adapter_model.safetensors").string());
  const CliRun r = run("inspect " + q(scratch.path()));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("warning:     lin0: lora_A.weight has rank 8 but lora_B.weight has 3"), std::string::npos) << r.out;
}

TEST(Cli, ConvertRewritesInjectStyleStateDictsAndDtypes) {
  const VectorCase c = VectorCase::load("lora_mlp_basic");
  Scratch scratch;
  fs::create_directories(scratch / "in");
  fs::copy_file(c.dir / "adapter_config.json", scratch / "in" / "adapter_config.json");
  // get_peft_model_state_dict keys (no "base_model.model."), as a C++ or inject-API user may have saved them.
  fs::copy_file(c.dir / "peft_state_dict.safetensors", scratch / "in" / "adapter_model.safetensors");
  const CliRun r = run("convert " + q(scratch / "in") + " --out " + q(scratch / "out") + " --dtype f16");
  ASSERT_EQ(r.code, 0) << r.err;
  const peft::StateDict ours = peft::safetensors::load_file((scratch / "out" / "adapter_model.safetensors").string());
  const peft::StateDict theirs = c.tensors("adapter_model.safetensors");
  ASSERT_EQ(ours.size(), theirs.size());
  for (const auto& item : theirs) {
    const at::Tensor* t = ours.find(item.key());
    ASSERT_TRUE(t) << item.key();
    EXPECT_EQ(t->scalar_type(), at::kHalf);
    EXPECT_TRUE(torch::equal(*t, item.value().to(at::kHalf))) << item.key();
  }
  EXPECT_TRUE(fs::exists(scratch / "out" / "adapter_config.json"));
}

TEST(Cli, BadInputIsOneClearLineAndLeavesNoOutput) {
  const VectorCase mlp = VectorCase::load("lora_mlp_basic");
  const VectorCase llama = VectorCase::load("lora_llama_layers_to_transform");
  Scratch scratch;
  fs::create_directories(scratch / "existing");
  std::ofstream(scratch / "garbage.safetensors") << "this is not a safetensors file";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"merge --base " + q(scratch / "missing.safetensors") + " --adapter " + q(mlp.dir) + " --out " + q(scratch / "o1"),
       "does not exist"},
      {"merge --base " + q(scratch / "garbage.safetensors") + " --adapter " + q(mlp.dir) + " --out " + q(scratch / "o2"),
       "garbage.safetensors"},
      {"merge --base " + q(mlp.dir / "base.safetensors") + " --adapter " + q(llama.dir) + " --out " + q(scratch / "o3"),
       "closest base names"},
      {"merge --base " + q(mlp.dir / "base.safetensors") + " --adapter " + q(mlp.dir) + " --out " + q(scratch / "existing"),
       "already exists"},
      {"merge --base " + q(mlp.dir / "base.safetensors") + " --adapter " + q(mlp.dir) + " --out " + q(scratch / "o4") +
           " --dtype int3",
       "unknown dtype"},
      {"inspect " + q(scratch / "nothing"), "does not exist"},
      {"merge --base " + q(mlp.dir / "base.safetensors") + " --out " + q(scratch / "o5"), "--adapter"},
  };
  for (const auto& [args, expected] : cases) {
    const CliRun r = run(args);
    EXPECT_EQ(r.code, 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(expected), std::string::npos) << args << "\n" << r.err;
    EXPECT_LE(std::count(r.err.begin(), r.err.end(), '\n'), 2) << r.err;
  }
  for (const char* name : {"o1", "o2", "o3", "o4", "o5"}) EXPECT_FALSE(fs::exists(scratch / name)) << name;
  EXPECT_FALSE(scratch.has_partial_leftovers());
}

TEST(Cli, HelpAndDemo) {
  EXPECT_EQ(run("--help").code, 0);
  EXPECT_EQ(run("merge --help").code, 0);
  Scratch scratch;
  const CliRun r = run("demo --out " + q(scratch / "demo"));
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("demo ok"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace peft_test
