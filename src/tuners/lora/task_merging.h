#pragma once

// Python PEFT's utils/merge_utils: ways to combine several task tensors (adapter weights or deltas) into one.

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::detail::lora {

/// sum_i w_i t_i.
at::Tensor task_arithmetic(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights);
/// task_arithmetic of each tensor's `density` largest magnitudes.
at::Tensor magnitude_prune(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density);
/// TIES: prune by magnitude, elect a sign per value ("total" or "frequency"), average the agreeing weighted values.
at::Tensor ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density,
                const std::string& majority_sign_method);
/// DARE: keep each value with probability `density` (rescaled by 1 / density; masks from the default generator).
at::Tensor dare_linear(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density);
at::Tensor dare_ties(const std::vector<at::Tensor>& tensors, const std::vector<double>& weights, double density,
                     const std::string& majority_sign_method);

}  // namespace peft::detail::lora
