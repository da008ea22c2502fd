#pragma once

// Access to the reference cases written by Python PEFT: tests/data/vectors (the workplace's shared set, see its
// INDEX.md) and tests/data/cases (cases this project generated the same way, see its README.md). Both hold case
// directories in the same format; case names are unique across the two.

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <peft/peft.h>

namespace peft_test {

std::filesystem::path vectors_dir();
std::filesystem::path cases_dir();
/// The directory of a case, in either root.
std::filesystem::path case_dir(const std::string& name);
/// Every case (a directory with a model.json) of both roots, sorted.
std::vector<std::string> all_cases();

struct VectorCase {
  std::string name;
  std::filesystem::path dir;
  nlohmann::json model;  // model.json
  nlohmann::json meta;   // meta.json

  static VectorCase load(const std::string& name);
  bool has(const std::string& file) const { return std::filesystem::exists(dir / file); }
  peft::StateDict tensors(const std::string& file) const;
  at::Tensor tensor(const std::string& file, const std::string& key = "output") const;
  at::Tensor input() const { return tensor("input.safetensors", "x"); }
  nlohmann::json json(const std::string& file) const;
};

/// Whether peft-cpp has this adapter method (peft::supported_peft_types()).
bool supported(const std::string& peft_type);

/// Names of the case directories (in either root) whose adapter_config.json has this peft_type.
std::vector<std::string> cases_with_peft_type(const std::string& peft_type);

/// Largest absolute difference (shapes must agree).
double max_abs_diff(const at::Tensor& a, const at::Tensor& b);

}  // namespace peft_test
