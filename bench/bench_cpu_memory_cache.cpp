// 10. peft::CpuMemoryCache in a process of its own: the Llama-shaped LoRA training step (bench_training.cpp's) on
// LibTorch's own allocator and inside a CpuMemoryCache, in alternating blocks of steps, with the minor page faults
// each step takes. A process of its own because glibc's heap remembers what earlier benchmarks freed (its mmap
// threshold rises), which hides most of the faults a training program meets from its first step on.
//
//   peft_bench_cpu_memory_cache [steps per block]   -> JSON on stdout

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <peft/peft.h>

#include "llama_shaped.h"

namespace {

int64_t minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 30;
  torch::manual_seed(0);
  peft_bench::LlamaShaped model = peft_bench::lora_training_model();
  const torch::Tensor tokens = torch::randn({4, 64, 512});
  torch::optim::AdamW optimizer(peft::trainable_tensors(model), torch::optim::AdamWOptions(1e-3));
  const auto step = [&] {
    optimizer.zero_grad();
    model->forward(tokens).pow(2).mean().backward();
    optimizer.step();
  };

  // Three blocks each, alternating, starting without the cache (as a program that never used one).
  std::vector<double> rate[2], faults[2];
  for (int block = 0; block < 6; ++block) {
    const int cached = block % 2;
    std::optional<peft::CpuMemoryCache> cache;
    if (cached) cache.emplace();
    for (int i = 0; i < 2; ++i) step();
    const int64_t faults_before = minor_faults();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) step();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    rate[cached].push_back(steps / seconds);
    faults[cached].push_back(static_cast<double>(minor_faults() - faults_before) / steps);
  }
  const auto side = [&](int cached) {
    return nlohmann::json{{"steps_per_s", median(rate[cached])}, {"steps_per_s_blocks", rate[cached]},
                          {"minor_faults_per_step", median(faults[cached])}};
  };
  std::cout << nlohmann::json{{"threads", torch::get_num_threads()},
                              {"steps_per_block", steps},
                              {"without_cache", side(0)},
                              {"with_cache", side(1)},
                              {"speedup", median(rate[1]) / median(rate[0])}}
                   .dump(2)
            << "\n";
}
