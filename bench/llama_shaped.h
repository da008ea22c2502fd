#pragma once

// The Llama-2-shaped module tree of Python PEFT's reference timings (TIMINGS.md): model.layers[i] with
// self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj, bias-free Linears.

#include <torch/torch.h>

namespace peft_bench {

enum class BaseWeights {
  Meta,    // every weight on the meta device (Python: device="meta")
  Cpu,     // real, uninitialised CPU memory whose pages are never touched (Python: to_empty(device="cpu"))
  Filled,  // real CPU weights with values
};

struct LlamaShapedImpl : torch::nn::Module {
  LlamaShapedImpl(int64_t layers, int64_t hidden, int64_t intermediate, BaseWeights weights);
  /// A forward through every projection (per layer x += o(q(x) + k(x) + v(x)); x += down(gate(x) * up(x))).
  torch::Tensor forward(torch::Tensor x);

  std::vector<std::array<torch::nn::Linear, 7>> projections;
};
TORCH_MODULE(LlamaShaped);

/// The LoRA config of the reference timings: r=16, alpha=32 on the 7 projections.
extern const std::vector<std::string> kProjections;

/// The training benchmarks' model (bench_training.cpp, bench_distributed.cpp, bench_cpu_memory_cache.cpp and
/// python_training.py): 4 layers, hidden 512, intermediate 1376, weights N(0, 0.02), LoRA r=16 alpha=32 on q_proj
/// and v_proj (only the adapter trains), in training mode. Draws from the global generator.
LlamaShaped lora_training_model();

}  // namespace peft_bench
