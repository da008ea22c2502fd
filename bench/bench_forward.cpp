// 4. Forward overhead: Linear(4096, 4096) plain / LoRA r=16 unmerged / merged at 1 and 8x128 tokens; the
// 7B tree at hidden 256 (per-call costs dominate) plain vs with LoRA; and the routing of a call through a
// layer that carries no adapter vs LibTorch's own forward.

#include <benchmark/benchmark.h>

#include <peft/peft.h>

#include "llama_shaped.h"
#include "routing/router.h"

namespace peft_bench {
namespace {

enum class Variant { Plain, Unmerged, Merged };

struct OneLinearImpl : torch::nn::Module {
  torch::nn::Linear lin{nullptr};
  OneLinearImpl() { lin = register_module("lin", torch::nn::Linear(4096, 4096)); }
  torch::Tensor forward(const torch::Tensor& x) { return lin(x); }
};
TORCH_MODULE(OneLinear);

void Linear4096(benchmark::State& state, Variant variant, std::vector<int64_t> shape) {
  torch::manual_seed(0);
  OneLinear model;
  model->eval();
  if (variant != Variant::Plain) {
    peft::inject_adapter_in_model(peft::LoraConfig().r(16).lora_alpha(32).target_modules({"lin"}).init_lora_weights(false), model);
    if (variant == Variant::Merged) peft::merge_adapter(*model);
  }
  const torch::Tensor x = torch::randn(shape);
  torch::NoGradGuard no_grad;
  for (int i = 0; i < 3; ++i) model->forward(x);
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(x));
}
const std::vector<int64_t> kOneToken{1, 1, 4096}, kBatch{8, 128, 4096};
BENCHMARK_CAPTURE(Linear4096, plain_1_token, Variant::Plain, kOneToken)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(Linear4096, lora_unmerged_1_token, Variant::Unmerged, kOneToken)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(Linear4096, lora_merged_1_token, Variant::Merged, kOneToken)->Unit(benchmark::kMicrosecond);
// Repeated (the report takes medians): a 2-core VM drifts by a few per cent between runs.
BENCHMARK_CAPTURE(Linear4096, plain_8x128, Variant::Plain, kBatch)->Unit(benchmark::kMillisecond)->Repetitions(5);
BENCHMARK_CAPTURE(Linear4096, lora_unmerged_8x128, Variant::Unmerged, kBatch)->Unit(benchmark::kMillisecond)->Repetitions(5);
BENCHMARK_CAPTURE(Linear4096, lora_merged_8x128, Variant::Merged, kBatch)->Unit(benchmark::kMillisecond)->Repetitions(5);

// The floor of an unmerged LoRA forward on CPU: its two rank-16 GEMMs alone (x A^T, then adding
// scaling * h B^T onto an existing output), which BLAS runs far below its square-GEMM speed.
void LoraGemmsAlone(benchmark::State& state) {
  torch::manual_seed(0);
  const torch::Tensor x = torch::randn({1024, 4096}), a = torch::randn({16, 4096}), b = torch::randn({4096, 16});
  torch::Tensor result = torch::randn({1024, 4096});
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    const torch::Tensor h = torch::linear(x, a);
    result.addmm_(h, b.t(), 1, 2.0);
    benchmark::ClobberMemory();
  }
}
BENCHMARK(LoraGemmsAlone)->Unit(benchmark::kMillisecond)->Repetitions(5);

void SmallLayers(benchmark::State& state, bool with_lora) {
  torch::manual_seed(0);
  LlamaShaped model(32, 256, 688, BaseWeights::Filled);
  model->eval();
  if (with_lora) {
    peft::inject_adapter_in_model(
        peft::LoraConfig().r(16).lora_alpha(32).target_modules(kProjections).init_lora_weights(false), model);
  }
  const torch::Tensor x = torch::randn({1, 256});
  torch::NoGradGuard no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(x));
}
BENCHMARK_CAPTURE(SmallLayers, plain, false)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(SmallLayers, lora_unmerged, true)->Unit(benchmark::kMicrosecond);

// A call through torch::nn::Linear whose layer has no adapter (the model has adapters elsewhere): the
// interposed forward's lookup, vs LibTorch's forward called directly.
void RoutingWithoutAdapter(benchmark::State& state, bool routed) {
  torch::manual_seed(0);
  OneLinear model;
  model->eval();
  torch::nn::Linear layer(256, 256);
  const torch::Tensor x = torch::randn({1, 256});
  torch::NoGradGuard no_grad;
  if (routed) {
    for (auto _ : state) benchmark::DoNotOptimize(layer(x));
  } else {
    for (auto _ : state) benchmark::DoNotOptimize(peft::detail::original_forward(*layer, x));
  }
}
BENCHMARK_CAPTURE(RoutingWithoutAdapter, libtorch_forward, false)->Unit(benchmark::kNanosecond)->Repetitions(5);
BENCHMARK_CAPTURE(RoutingWithoutAdapter, routed_forward, true)->Unit(benchmark::kNanosecond)->Repetitions(5);

}  // namespace
}  // namespace peft_bench
