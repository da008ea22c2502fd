#pragma once

#include <memory>
#include <type_traits>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <peft/error.h>

namespace peft {

/// The model argument of every peft-cpp function: pass a TORCH_MODULE holder, a std::shared_ptr to a
/// module, or the module itself, whichever you have (`peft::set_adapter(model, "a")` and
/// `peft::set_adapter(*model, "a")` are the same call). An empty holder is refused with peft::Error.
class ModuleRef {
 public:
  ModuleRef(torch::nn::Module& module) : module_(&module) {}  // NOLINT: implicit by design
  template <class M>
  ModuleRef(const torch::nn::ModuleHolder<M>& holder) : module_(non_empty(holder.ptr().get())) {}  // NOLINT
  template <class M, std::enable_if_t<std::is_base_of_v<torch::nn::Module, M>, int> = 0>
  ModuleRef(const std::shared_ptr<M>& module) : module_(non_empty(module.get())) {}  // NOLINT

  torch::nn::Module& get() const { return *module_; }
  torch::nn::Module* operator->() const { return module_; }
  torch::nn::Module& operator*() const { return *module_; }

 private:
  static torch::nn::Module* non_empty(torch::nn::Module* module) {
    if (!module) throw Error("peft-cpp was given an empty module handle (a holder constructed with nullptr?)");
    return module;
  }
  torch::nn::Module* module_;
};

/// The same for functions that only read the model.
class ConstModuleRef {
 public:
  ConstModuleRef(const torch::nn::Module& module) : module_(&module) {}  // NOLINT: implicit by design
  ConstModuleRef(ModuleRef module) : module_(&module.get()) {}           // NOLINT
  template <class M>
  ConstModuleRef(const torch::nn::ModuleHolder<M>& holder) : ConstModuleRef(ModuleRef(holder)) {}  // NOLINT
  template <class M, std::enable_if_t<std::is_base_of_v<torch::nn::Module, M>, int> = 0>
  ConstModuleRef(const std::shared_ptr<M>& module) : ConstModuleRef(ModuleRef(module)) {}  // NOLINT

  const torch::nn::Module& get() const { return *module_; }
  const torch::nn::Module* operator->() const { return module_; }
  const torch::nn::Module& operator*() const { return *module_; }

 private:
  const torch::nn::Module* module_;
};

}  // namespace peft
