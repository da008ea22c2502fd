#include "llama_shaped.h"

#include <peft/inject.h>
#include <peft/layers.h>
#include <peft/tuners/lora/config.h>

namespace peft_bench {

const std::vector<std::string> kProjections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

LlamaShapedImpl::LlamaShapedImpl(int64_t layers, int64_t hidden, int64_t intermediate, BaseWeights weights) {
  const auto options = torch::TensorOptions().device(weights == BaseWeights::Meta ? torch::kMeta : torch::kCPU);
  auto model = register_module("model", std::make_shared<torch::nn::Module>());
  auto list = model->register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < layers; ++i) {
    auto layer = std::make_shared<torch::nn::Module>();
    auto attn = layer->register_module("self_attn", std::make_shared<torch::nn::Module>());
    auto mlp = layer->register_module("mlp", std::make_shared<torch::nn::Module>());
    auto make = [&](torch::nn::Module& parent, const std::string& name, int64_t in, int64_t out) {
      // Uninitialised shells (what to_empty gives in Python); Filled writes values below.
      torch::nn::Linear linear = peft::empty_linear(torch::nn::LinearOptions(in, out).bias(false), options);
      if (weights == BaseWeights::Filled) {
        torch::NoGradGuard no_grad;
        linear->weight.normal_(0, 0.02);
      }
      return parent.register_module(name, linear);
    };
    projections.push_back({make(*attn, "q_proj", hidden, hidden), make(*attn, "k_proj", hidden, hidden),
                           make(*attn, "v_proj", hidden, hidden), make(*attn, "o_proj", hidden, hidden),
                           make(*mlp, "gate_proj", hidden, intermediate), make(*mlp, "up_proj", hidden, intermediate),
                           make(*mlp, "down_proj", intermediate, hidden)});
    list->push_back(layer);
  }
}

torch::Tensor LlamaShapedImpl::forward(torch::Tensor x) {
  for (auto& p : projections) {
    // Residual connections, as in the real model: without them the activations shrink by ~100x per layer (weights
    // N(0, 0.02)), and the backward pass of a 4-layer stack runs on denormal floats, which are 10-100x slower in
    // BLAS and made the timings depend on the exact random values.
    x = x + p[3](p[0](x) + p[1](x) + p[2](x));
    x = x + p[6](p[4](x) * p[5](x));
  }
  return x;
}

LlamaShaped lora_training_model() {
  LlamaShaped model(4, 512, 1376, BaseWeights::Filled);
  peft::inject_adapter_in_model(peft::LoraConfig().r(16).lora_alpha(32).target_modules({"q_proj", "v_proj"}), model);
  model->train();
  return model;
}

}  // namespace peft_bench
