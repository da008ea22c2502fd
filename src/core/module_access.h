#pragma once

// In-place access to a torch::nn::Module's registries.
//
// Module::children(), named_children() and named_parameters() return copies: an allocation plus an atomic
// increment per entry. The routed forward looks at the children of every Linear/Embedding/Conv call, and
// loading adopts tensors into existing parameter slots (register_parameter refuses an existing name), so
// both read and write the registries in place.

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/ordered_dict.h>

namespace torch::nn {
class ModuleListImpl;
}  // namespace torch::nn

namespace peft::detail {

using ChildMap = torch::OrderedDict<std::string, std::shared_ptr<torch::nn::Module>>;
using TensorMap = torch::OrderedDict<std::string, at::Tensor>;

extern ChildMap torch::nn::Module::*const kChildrenMember;
extern TensorMap torch::nn::Module::*const kBuffersMember;

inline const ChildMap& children_of(const torch::nn::Module& module) { return module.*kChildrenMember; }
inline const TensorMap& buffers_of(const torch::nn::Module& module) { return module.*kBuffersMember; }
inline TensorMap& buffers_of(torch::nn::Module& module) { return module.*kBuffersMember; }

// parameters_ is protected: a pointer to it can be formed inside a class derived from Module.
struct ParametersAccess : torch::nn::Module {
  static TensorMap& of(torch::nn::Module& module) { return module.*(&ParametersAccess::parameters_); }
  static const TensorMap& of(const torch::nn::Module& module) { return module.*(&ParametersAccess::parameters_); }
};
inline TensorMap& parameters_of(torch::nn::Module& module) { return ParametersAccess::of(module); }

/// The entries of a ModuleList (its private modules_, which its iteration reads), for changing the list in place.
using ModuleVector = std::vector<std::shared_ptr<torch::nn::Module>>;
ModuleVector& modules_of(torch::nn::ModuleListImpl& list);
inline const TensorMap& parameters_of(const torch::nn::Module& module) { return ParametersAccess::of(module); }

}  // namespace peft::detail
