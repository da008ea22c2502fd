#pragma once

// Access to tests/data/vectors: reference files written by Python PEFT (see its INDEX.md).

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <peft/peft.h>

namespace peft_test {

std::filesystem::path vectors_dir();

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

/// Names of the case directories whose adapter_config.json has this peft_type.
std::vector<std::string> cases_with_peft_type(const std::string& peft_type);

/// Largest absolute difference (shapes must agree).
double max_abs_diff(const at::Tensor& a, const at::Tensor& b);

}  // namespace peft_test
