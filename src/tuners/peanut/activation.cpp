// transformers' ACT2FN activations, as plain tensor functions. Each entry is a fresh module in Python
// (ClassInstantier), so the ones with parameters (PReLU) act with their initial values.

#include "tuners/peanut/activation.h"

#include <cmath>
#include <map>

#include <ATen/TensorOperators.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/erf.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/hardswish.h>
#include <ATen/ops/hardtanh.h>
#include <ATen/ops/leaky_relu.h>
#include <ATen/ops/mish.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/where.h>

namespace peft::detail::peanut {
namespace {

const double kPi = std::acos(-1.0);

at::Tensor tanh_gelu(const at::Tensor& x) {
  return 0.5 * x * (1.0 + at::tanh(std::sqrt(2.0 / kPi) * (x + 0.044715 * at::pow(x, 3.0))));
}

const std::map<std::string, Activation>& implemented() {
  static const std::map<std::string, Activation> table{
      {"gelu", [](const at::Tensor& x) { return at::gelu(x); }},
      {"gelu_10", [](const at::Tensor& x) { return at::clamp(at::gelu(x), -10, 10); }},
      {"gelu_fast",
       [](const at::Tensor& x) { return 0.5 * x * (1.0 + at::tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))); }},
      {"gelu_new", tanh_gelu},
      {"gelu_accurate", tanh_gelu},
      {"gelu_python", [](const at::Tensor& x) { return x * 0.5 * (1.0 + at::erf(x / std::sqrt(2.0))); }},
      {"gelu_pytorch_tanh", [](const at::Tensor& x) { return at::gelu(x, "tanh"); }},
      {"gelu_python_tanh",
       [](const at::Tensor& x) { return x * 0.5 * (1.0 + at::tanh(std::sqrt(2.0 / kPi) * (x + 0.044715 * at::pow(x, 3.0)))); }},
      {"hardswish", [](const at::Tensor& x) { return at::hardswish(x); }},
      {"laplace",
       [](const at::Tensor& x) { return 0.5 * (1.0 + at::erf((x - 0.707107) / (0.282095 * std::sqrt(2.0)))); }},
      {"leaky_relu", [](const at::Tensor& x) { return at::leaky_relu(x, 0.01); }},
      {"linear", [](const at::Tensor& x) { return x; }},
      {"mish", [](const at::Tensor& x) { return at::mish(x); }},
      {"prelu", [](const at::Tensor& x) { return at::where(x >= 0, x, 0.25 * x); }},
      {"quick_gelu", [](const at::Tensor& x) { return x * at::sigmoid(1.702 * x); }},
      {"relu", [](const at::Tensor& x) { return at::relu(x); }},
      {"relu2", [](const at::Tensor& x) { return at::relu(x).square(); }},
      {"relu6", [](const at::Tensor& x) { return at::hardtanh(x, 0, 6); }},
      {"sigmoid", [](const at::Tensor& x) { return at::sigmoid(x); }},
      {"silu", [](const at::Tensor& x) { return at::silu(x); }},
      {"swish", [](const at::Tensor& x) { return at::silu(x); }},
      {"tanh", [](const at::Tensor& x) { return at::tanh(x); }},
  };
  return table;
}

}  // namespace

const std::vector<std::string>& act2fn_keys() {
  static const std::vector<std::string> keys{
      "gelu",  "gelu_10", "gelu_accurate", "gelu_fast", "gelu_new", "gelu_python", "gelu_python_tanh",
      "gelu_pytorch_tanh", "hardswish", "laplace", "leaky_relu", "linear", "mish", "prelu", "quick_gelu",
      "relu", "relu2", "relu6", "sigmoid", "silu", "sqrtsoftplus", "swish", "tanh", "xielu"};
  return keys;
}

Activation activation(const std::string& key) {
  const auto& table = implemented();
  auto it = table.find(key);
  return it == table.end() ? Activation() : it->second;
}

}  // namespace peft::detail::peanut
