#pragma once

// What a TorchScript model carries while it has adapters (<peft/torchscript.h> says how it works): its torch::nn
// view, and which of its class types have their forward methods replaced by calls into the view.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/jit/api/module.h>
#include <torch/custom_class.h>

#include "torchscript/view_layers.h"

namespace peft::detail::torchscript {

class Attachment : public torch::CustomClassHolder {
 public:
  /// The model's attachment, or null.
  static c10::intrusive_ptr<Attachment> find(const torch::jit::Module& model);
  /// A new view of `model`, not attached to it yet.
  static c10::intrusive_ptr<Attachment> build(const torch::jit::Module& model);

  const std::shared_ptr<torch::nn::Module>& view() const { return view_; }

  /// Brings the model in step with its view after a change to the view: tensors the view replaced go back to the
  /// submodules, types with an adapted instance call their view layers, the others their own methods again. The
  /// attachment is stored on the model while any adapter remains and removed (the model exactly as loaded) after.
  void sync(torch::jit::Module& model);

 private:
  struct Submodule {
    std::string name;
    ViewLayer view;
  };
  void route(c10::ClassType& type, const std::vector<const Submodule*>& instances,
             std::map<std::string, torch::jit::Module>& modules);
  void restore(c10::ClassType& type, std::map<std::string, torch::jit::Module>& modules);
  void refresh_callers(torch::jit::CompilationUnit& unit);
  void restore_all_methods();

  std::shared_ptr<torch::nn::Module> view_;
  std::vector<Submodule> submodules_;
  // Every class type of the model with its methods as loaded: routing puts new functions in (new functions get new
  // executors; a caller's executor has its callees' code inlined), detaching puts these back.
  std::vector<std::pair<c10::ClassTypePtr, std::vector<torch::jit::Function*>>> original_methods_;
  std::map<const c10::ClassType*, std::vector<std::string>> routed_;  // type -> the methods replaced
};

}  // namespace peft::detail::torchscript
