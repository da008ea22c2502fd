// 7. Training: one LoRA step (zero_grad, forward, loss, backward, AdamW step) of the Fashion-MNIST example's MLP
// and of a Llama-shaped stack (4 layers, hidden 512, LoRA r=16 on q_proj and v_proj), against Python PEFT's
// steps/s for the same models on the same LibTorch (bench/python_training.py; figures in python_reference.h),
// and, measured in the same run, the full fine-tuning step of the same model.

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>

#include <benchmark/benchmark.h>

#include <peft/peft.h>
#include <peft/training.h>

#include "llama_shaped.h"
#include "python_reference.h"

namespace peft_bench::training_bench {
namespace {

// examples/finetune_fashion_mnist.cpp's model.
struct ClassifierImpl : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, head{nullptr};
  ClassifierImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(784, 256));
    fc2 = register_module("fc2", torch::nn::Linear(256, 128));
    head = register_module("head", torch::nn::Linear(128, 10));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(torch::relu(fc2(torch::relu(fc1(x))))); }
};
TORCH_MODULE(Classifier);

/// Times `step` (LoRA) in the benchmark loop, then as many `base_pass`es (the frozen base model's own forward and
/// backward to its input, no adapter: about the least a LoRA step can cost in either runtime, since both run the same
/// base GEMMs; it also computes the first layer's input gradients, which a LoRA step skips), then as many
/// `full_step`s (every base parameter trained); reports steps/s and the ratios to Python PEFT, to that floor and to
/// full fine-tuning. The three are not interleaved step by step:
/// a full step evicts the LoRA model's weights from the caches, which slowed the next LoRA step of the Llama-shaped
/// stack by half again (Python's figure comes from LoRA steps alone).
/// Python's figure for this process's threads: the one-thread one when OMP_NUM_THREADS=1 was set before the start
/// (torch::set_num_threads(1) alone leaves OpenBLAS on every core), else the default-threads one.
double python_figure(double default_threads, double one_thread) {
  const char* omp = std::getenv("OMP_NUM_THREADS");
  return omp && std::strcmp(omp, "1") == 0 ? one_thread : default_threads;
}

void time_steps(benchmark::State& state, const std::function<void()>& step, const std::function<void()>& full_step,
                const std::function<void()>& base_pass, double python_steps_per_s) {
  using Clock = std::chrono::steady_clock;
  int64_t iterations = 0;
  // Seconds per call of `f` over as many calls as the benchmark loop made, after 3 warm-up calls.
  const auto seconds_per_call = [&iterations](const std::function<void()>& f) {
    for (int i = 0; i < 3; ++i) f();
    const auto start = Clock::now();
    for (int64_t i = 0; i < iterations; ++i) f();
    return std::chrono::duration<double>(Clock::now() - start).count() / static_cast<double>(iterations);
  };
  double lora_s = 0, base_s = 0, full_s = 0;
  {
    peft::CpuMemoryCache cache;  // as a peft-cpp training loop runs (<peft/cpu_memory_cache.h>)
    for (int i = 0; i < 3; ++i) step();
    Clock::duration lora{};
    for (auto _ : state) {
      const auto start = Clock::now();
      step();
      lora += Clock::now() - start;
      ++iterations;
    }
    lora_s = std::chrono::duration<double>(lora).count() / static_cast<double>(iterations);
    base_s = seconds_per_call(base_pass);
    full_s = seconds_per_call(full_step);
  }
  // The same LoRA step on LibTorch's own allocator (glibc's malloc), as Python runs it.
  const double uncached_s = seconds_per_call(step);
  state.counters["steps_per_s"] = 1 / lora_s;
  state.counters["full_finetune_steps_per_s"] = 1 / full_s;
  state.counters["base_fwd_bwd_per_s"] = 1 / base_s;
  state.counters["vs_base"] = lora_s / base_s;
  state.counters["python_steps_per_s"] = python_steps_per_s;
  state.counters["threads"] = torch::get_num_threads();
  state.counters["vs_python"] = (1 / lora_s) / python_steps_per_s;
  state.counters["no_cache_steps_per_s"] = 1 / uncached_s;
}

/// The frozen `model`'s forward and backward to a copy of `input` (every parameter frozen, no optimizer).
template <typename Model>
std::function<void()> frozen_base_pass(Model model, const torch::Tensor& input,
                                       std::function<torch::Tensor(const torch::Tensor&)> loss) {
  for (auto& p : model->parameters()) p.requires_grad_(false);
  model->train();
  const torch::Tensor x = input.clone().requires_grad_(true);
  return [model, x, loss]() mutable {
    loss(model->forward(x)).backward();
    x.mutable_grad().reset();
  };
}

/// zero_grad, forward, `loss`, backward, step.
std::function<void()> training_step(const std::function<torch::Tensor()>& loss, torch::optim::Optimizer& optimizer) {
  return [&optimizer, loss] {
    optimizer.zero_grad();
    loss().backward();
    optimizer.step();
  };
}

void TrainStepClassifier(benchmark::State& state) {
  torch::manual_seed(0);
  Classifier model, full;
  peft::inject_adapter_in_model(
      peft::LoraConfig().r(8).lora_alpha(16).target_modules({"fc1", "fc2"}).modules_to_save({"head"}), model);
  peft::mark_only_adapters_as_trainable(model);
  model->train();
  full->train();
  const torch::Tensor images = torch::randn({128, 784}), labels = torch::randint(0, 10, {128});
  torch::optim::AdamW optimizer(peft::trainable_tensors(model), torch::optim::AdamWOptions(2e-3));
  torch::optim::AdamW full_optimizer(full->parameters(), torch::optim::AdamWOptions(2e-3));
  time_steps(state,
             training_step([&] { return torch::cross_entropy_loss(model->forward(images), labels); }, optimizer),
             training_step([&] { return torch::cross_entropy_loss(full->forward(images), labels); }, full_optimizer),
             frozen_base_pass(Classifier(), images,
                              [&](const torch::Tensor& y) { return torch::cross_entropy_loss(y, labels); }),
             python_figure(python_steps_per_s::kTrainClassifier, python_steps_per_s::kTrainClassifierOneThread));
}
BENCHMARK(TrainStepClassifier)->Unit(benchmark::kMillisecond)->MinTime(5);

void TrainStepLlama(benchmark::State& state) {
  torch::manual_seed(0);
  LlamaShaped model = lora_training_model(), full(4, 512, 1376, BaseWeights::Filled);
  full->train();
  const torch::Tensor tokens = torch::randn({4, 64, 512});
  torch::optim::AdamW optimizer(peft::trainable_tensors(model), torch::optim::AdamWOptions(1e-3));
  torch::optim::AdamW full_optimizer(full->parameters(), torch::optim::AdamWOptions(1e-3));
  time_steps(state, training_step([&] { return model->forward(tokens).pow(2).mean(); }, optimizer),
             training_step([&] { return full->forward(tokens).pow(2).mean(); }, full_optimizer),
             frozen_base_pass(LlamaShaped(4, 512, 1376, BaseWeights::Filled), tokens,
                              [](const torch::Tensor& y) { return y.pow(2).mean(); }),
             python_figure(python_steps_per_s::kTrainLlama, python_steps_per_s::kTrainLlamaOneThread));
}
BENCHMARK(TrainStepLlama)->Unit(benchmark::kMillisecond)->MinTime(10);

}  // namespace
}  // namespace peft_bench::training_bench
