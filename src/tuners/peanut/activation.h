#pragma once

// The activations PEANuT may use: transformers' ACT2FN, by key.

#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::detail::peanut {

using Activation = std::function<at::Tensor(const at::Tensor&)>;

/// Every key of transformers' ACT2FN, sorted (Python's config accepts exactly these).
const std::vector<std::string>& act2fn_keys();

/// The activation for an ACT2FN key, or an empty function where peft-cpp does not implement it.
Activation activation(const std::string& key);

}  // namespace peft::detail::peanut
