#pragma once

#include <functional>
#include <string>

#include <torch/nn/module.h>

namespace peft::detail {

/// One module of the model, as the walk reaches it.
struct ModuleVisit {
  const std::string& name;  // dotted name; "" for the root
  torch::nn::Module& module;
  torch::nn::Module* parent;  // nullptr for the root
};

/// Visits the model's own modules in pre-order and registration order (Python's named_modules order),
/// once per module object, without entering the containers adapters added to a layer.
void walk_modules(torch::nn::Module& root, const std::function<void(const ModuleVisit&)>& visit);
void walk_modules(const torch::nn::Module& root, const std::function<void(const std::string&, const torch::nn::Module&)>& visit);

}  // namespace peft::detail
