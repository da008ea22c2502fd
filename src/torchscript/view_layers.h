#pragma once

// The torch::nn view of one TorchScript submodule: which layer its forward computes (read from its graph) and the
// torch::nn layer that computes the same thing with the submodule's own tensors.

#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/jit/api/module.h>
#include <torch/nn/module.h>

namespace peft::detail::torchscript {

struct ViewLayer {
  /// The torch::nn module standing for the submodule: a layer sharing its tensors, or a plain container.
  std::shared_ptr<torch::nn::Module> module;
  /// Whether `module` is a layer peft-cpp adapts; otherwise `why_not` says what the submodule's forward does.
  bool is_layer = false;
  std::string why_not;
  /// The methods calls arrive through: forward, and forward1, forward2, ... of a traced module called several times.
  std::vector<std::string> forward_methods;
};

/// Reads `submodule`'s forward methods and builds its view. Never throws for an unusual submodule: it becomes a
/// container whose `why_not` explains.
ViewLayer make_view_layer(const torch::jit::Module& submodule);
/// The container standing for `submodule` when it is not a layer (its own tensors included).
std::shared_ptr<torch::nn::Module> make_view_container(const torch::jit::Module& submodule, const std::string& why_not);

/// Runs the view layer (its adapters included) on `input`.
at::Tensor run_view_layer(torch::nn::Module& layer, const at::Tensor& input);

/// The view layer's base tensors by TorchScript attribute name ("weight", "bias").
std::vector<std::pair<std::string, at::Tensor>> view_layer_tensors(const torch::nn::Module& layer);

}  // namespace peft::detail::torchscript
