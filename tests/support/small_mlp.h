#pragma once

// The MLP of tests/data/methods/{lora_init,save_as_lora}: y = lin2(relu(lin1(relu(lin0(x))))), Linear(10, 20),
// Linear(20, 20), Linear(20, 4), its weights read from a base.safetensors.

#include <filesystem>

#include <torch/nn/module.h>
#include <torch/nn/functional/activation.h>

#include <peft/layers.h>
#include <peft/safetensors.h>

#include "support/layers.h"

namespace peft_test {

struct SmallMlpImpl : torch::nn::Module {
  nn::Linear lin0{10, 20}, lin1{20, 20}, lin2{20, 4};
  SmallMlpImpl() {
    register_module("lin0", lin0);
    register_module("lin1", lin1);
    register_module("lin2", lin2);
  }
  at::Tensor forward(const at::Tensor& x) {
    namespace F = torch::nn::functional;
    return lin2(F::relu(lin1(F::relu(lin0(x)))));
  }
};
TORCH_MODULE(SmallMlp);

/// The MLP in eval mode with the weights of `base_file` (copied: inits may change them in place).
inline SmallMlp load_small_mlp(const std::filesystem::path& base_file) {
  SmallMlp model;
  peft::StateDict weights;
  for (const auto& item : peft::safetensors::load_file(base_file.string())) weights.insert(item.key(), item.value().clone());
  peft::assign_tensors(*model, weights);
  model->eval();
  return model;
}

}  // namespace peft_test
