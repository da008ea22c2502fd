#include "support/vectors.h"

#include <cstdlib>
#include <fstream>

#include <gtest/gtest.h>

namespace peft_test {

std::filesystem::path vectors_dir() {
  if (const char* env = std::getenv("PEFT_VECTORS_DIR")) return env;
  return PEFT_VECTORS_DIR;
}

std::filesystem::path cases_dir() {
  if (const char* env = std::getenv("PEFT_CASES_DIR")) return env;
  return PEFT_CASES_DIR;
}

namespace {
std::vector<std::filesystem::path> case_roots() { return {vectors_dir(), cases_dir()}; }
}  // namespace

std::filesystem::path case_dir(const std::string& name) {
  for (const auto& root : case_roots()) {
    if (std::filesystem::exists(root / name / "model.json")) return root / name;
  }
  throw std::runtime_error("reference case missing: " + name + " (in " + vectors_dir().string() + " or " +
                           cases_dir().string() + ")");
}

std::vector<std::string> all_cases() {
  std::vector<std::string> out;
  for (const auto& root : case_roots()) {
    if (!std::filesystem::is_directory(root)) continue;
    for (const auto& entry : std::filesystem::directory_iterator(root)) {
      if (std::filesystem::exists(entry.path() / "model.json")) out.push_back(entry.path().filename().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

VectorCase VectorCase::load(const std::string& name) {
  VectorCase c;
  c.name = name;
  c.dir = case_dir(name);
  c.model = c.json("model.json");
  c.meta = c.json("meta.json");
  return c;
}

nlohmann::json VectorCase::json(const std::string& file) const {
  std::ifstream in(dir / file);
  if (!in) throw std::runtime_error("cannot read " + (dir / file).string());
  return nlohmann::json::parse(in);
}

peft::StateDict VectorCase::tensors(const std::string& file) const {
  return peft::safetensors::load_file((dir / file).string());
}

at::Tensor VectorCase::tensor(const std::string& file, const std::string& key) const {
  const peft::StateDict sd = tensors(file);
  const at::Tensor* t = sd.find(key);
  if (!t) throw std::runtime_error(file + " has no key " + key);
  return *t;
}

bool supported(const std::string& peft_type) {
  const std::vector<std::string> types = peft::supported_peft_types();
  return std::find(types.begin(), types.end(), peft_type) != types.end();
}

std::vector<std::string> cases_with_peft_type(const std::string& peft_type) {
  std::vector<std::string> out;
  for (const auto& name : all_cases()) {
    std::ifstream in(case_dir(name) / "adapter_config.json");
    if (in && nlohmann::json::parse(in).value("peft_type", "") == peft_type) out.push_back(name);
  }
  return out;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) {
    ADD_FAILURE() << "shape mismatch " << a.sizes() << " vs " << b.sizes();
    return std::numeric_limits<double>::infinity();
  }
  if (a.numel() == 0) return 0.0;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace peft_test
