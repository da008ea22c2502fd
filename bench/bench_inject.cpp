// 1. Injection of LoRA r=16 into the Llama-2-7B-shaped tree (224 targets), and into the 8x1024 tree with real
// CPU weights; 2. get/set_peft_model_state_dict on the 7B adapter (448 tensors, 40M parameters). Reported
// with Python PEFT's figure for the same scenario and the time to build the tree in this run.

#include <chrono>
#include <cmath>

#include <benchmark/benchmark.h>

#include <peft/peft.h>

#include "llama_shaped.h"
#include "python_reference.h"

namespace peft_bench::inject_bench {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point start) { return std::chrono::duration<double, std::milli>(Clock::now() - start).count(); }

peft::LoraConfig lora() { return peft::LoraConfig().r(16).lora_alpha(32).target_modules(kProjections); }

struct Shape {
  int64_t layers, hidden, intermediate;
};
constexpr Shape k7b{32, 4096, 11008};
constexpr Shape kSmall{8, 1024, 2752};

void report(benchmark::State& state, double total_ms, double build_ms, double python) {
  const double ours = total_ms / static_cast<double>(state.iterations());
  state.counters["ms"] = ours;
  state.counters["python_ms"] = python;
  state.counters["speedup_vs_python"] = python / ours;
  state.counters["build_tree_ms"] = build_ms / static_cast<double>(state.iterations());
}

void Inject(benchmark::State& state, Shape shape, BaseWeights weights, bool low_cpu, double python) {
  double total = 0, build = 0;
  for (auto _ : state) {
    auto start = Clock::now();
    LlamaShaped model(shape.layers, shape.hidden, shape.intermediate, weights);
    build += ms_since(start);
    start = Clock::now();
    peft::inject_adapter_in_model(lora(), model, "default", low_cpu);
    const double t = ms_since(start);
    total += t;
    state.SetIterationTime(t / 1e3);
  }
  report(state, total, build, python);
}

BENCHMARK_CAPTURE(Inject, llama7b_meta_low_cpu, k7b, BaseWeights::Meta, true, python_ms::kInject7bMetaLowCpu)
    ->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Inject, llama7b_meta, k7b, BaseWeights::Meta, false, python_ms::kInject7bMeta)
    ->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Inject, llama7b_cpu_low_cpu, k7b, BaseWeights::Cpu, true, python_ms::kInject7bCpuLowCpu)
    ->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Inject, llama7b_cpu, k7b, BaseWeights::Cpu, false, python_ms::kInject7bCpu)
    ->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Inject, small_cpu_filled_low_cpu, kSmall, BaseWeights::Filled, true, python_ms::kInjectSmallCpuLowCpu)
    ->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(Inject, small_cpu_filled, kSmall, BaseWeights::Filled, false, python_ms::kInjectSmallCpu)
    ->UseManualTime()->Unit(benchmark::kMillisecond);

// The floor of injecting with real adapter weights the way Python PEFT does (so that a seed gives Python's
// values): allocating them and drawing what Python draws from the CPU generator — nn.Linear's default init
// of lora_A and lora_B, then lora_A's kaiming-uniform again, lora_B zeroed — with no PEFT machinery at all.
void AdapterInitBaseline(benchmark::State& state, Shape shape) {
  const std::vector<std::pair<int64_t, int64_t>> dims = {
      {shape.hidden, shape.hidden}, {shape.hidden, shape.hidden}, {shape.hidden, shape.hidden}, {shape.hidden, shape.hidden},
      {shape.hidden, shape.intermediate}, {shape.hidden, shape.intermediate}, {shape.intermediate, shape.hidden}};
  for (auto _ : state) {
    std::vector<at::Tensor> keep;
    for (int64_t l = 0; l < shape.layers; ++l) {
      for (const auto& [in, out] : dims) {
        const double bound = 1.0 / std::sqrt(static_cast<double>(in));
        at::Tensor a = torch::empty({16, in}).uniform_(-bound, bound);
        at::Tensor b = torch::empty({out, 16}).uniform_(-0.25, 0.25);
        a.uniform_(-bound, bound);
        b.zero_();
        keep.push_back(a);
        keep.push_back(b);
      }
    }
    benchmark::DoNotOptimize(keep.data());
  }
}
BENCHMARK_CAPTURE(AdapterInitBaseline, llama7b, k7b)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(AdapterInitBaseline, small, kSmall)->Unit(benchmark::kMillisecond);

peft::StateDict random_adapter(const torch::nn::Module& model) {
  peft::StateDict out;
  torch::manual_seed(0);
  for (const auto& item : peft::get_peft_model_state_dict(model)) out.insert(item.key(), torch::randn(item.value().sizes()) * 0.01);
  return out;
}

void GetStateDict(benchmark::State& state) {
  LlamaShaped model(k7b.layers, k7b.hidden, k7b.intermediate, BaseWeights::Cpu);
  peft::inject_adapter_in_model(lora(), model, "default", true);
  double total = 0;
  for (auto _ : state) {
    const auto start = Clock::now();
    benchmark::DoNotOptimize(peft::get_peft_model_state_dict(*model));
    total += ms_since(start);
  }
  report(state, total, 0, python_ms::kGetStateDict7b);
}
BENCHMARK(GetStateDict)->Unit(benchmark::kMillisecond);

// low_cpu_mem_usage adopts the given tensors (no copy, as Python's assign=True); otherwise copies into the
// adapter's own.
void SetStateDict(benchmark::State& state, bool low_cpu, double python) {
  LlamaShaped probe(k7b.layers, k7b.hidden, k7b.intermediate, BaseWeights::Meta);
  peft::inject_adapter_in_model(lora(), probe, "default", true);
  const peft::StateDict weights = random_adapter(*probe);
  double total = 0;
  bool shares = true;
  for (auto _ : state) {
    state.PauseTiming();
    LlamaShaped model(k7b.layers, k7b.hidden, k7b.intermediate, BaseWeights::Cpu);
    peft::inject_adapter_in_model(lora(), model, "default", low_cpu);
    state.ResumeTiming();
    const auto start = Clock::now();
    peft::set_peft_model_state_dict(*model, weights, "default", low_cpu);
    total += ms_since(start);
    const at::Tensor a = model->named_parameters()["model.layers.0.self_attn.q_proj.lora_A.default.weight"];  // a copy: the dict is a temporary
    shares = shares && a.data_ptr() == weights["model.layers.0.self_attn.q_proj.lora_A.weight"].data_ptr();
  }
  report(state, total, 0, python);
  state.counters["zero_copy"] = shares ? 1 : 0;
}
BENCHMARK_CAPTURE(SetStateDict, llama7b_low_cpu, true, python_ms::kSetStateDict7bLowCpu)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(SetStateDict, llama7b, false, python_ms::kSetStateDict7b)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace peft_bench::inject_bench
