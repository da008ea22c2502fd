#pragma once

#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace peft_test {

/// Everything observable about a model's structure and tensors, to prove an operation left it as it was.
struct ModelSnapshot {
  std::vector<std::string> modules;
  std::vector<std::string> parameter_names;
  std::map<std::string, torch::Tensor> values;
  std::map<std::string, bool> requires_grad;

  explicit ModelSnapshot(const torch::nn::Module& model) {
    for (const auto& m : model.named_modules()) modules.push_back(m.key());
    for (const auto& p : model.named_parameters()) {
      parameter_names.push_back(p.key());
      values[p.key()] = p.value().device().is_meta() ? p.value() : p.value().detach().clone();
      requires_grad[p.key()] = p.value().requires_grad();
    }
  }

  bool operator==(const ModelSnapshot& other) const {
    if (modules != other.modules || parameter_names != other.parameter_names || requires_grad != other.requires_grad) {
      return false;
    }
    for (const auto& [name, value] : values) {
      const auto& theirs = other.values.at(name);
      if (value.device().is_meta() != theirs.device().is_meta()) return false;
      if (!value.device().is_meta() && !torch::equal(value, theirs)) return false;
    }
    return true;
  }
};

}  // namespace peft_test
