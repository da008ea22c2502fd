// 8. Data-parallel overhead: the LoRA training step of bench_training.cpp's Llama-shaped stack (4 layers,
// hidden 512, r=16 on q_proj and v_proj) on 2 ranks x 1 thread vs 1 rank x 1 thread, at the same per-rank batch
// (4 x 64 tokens), and the bytes all_reduce_gradients moves per step (the adapter's gradients). Its own program:
// it starts itself as the ranks (peft::distributed::launch, Gloo over loopback).
//
//   peft_bench_distributed [STEPS]     prints one JSON object

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <peft/distributed.h>
#include <peft/peft.h>
#include <peft/training.h>

#include "llama_shaped.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One rank: `steps` timed steps after two untimed ones; rank 0 writes its figures to `out`.
int worker(const std::string& out, int steps) {
  torch::set_num_threads(1);
  peft::CpuMemoryCache cache;  // as a peft-cpp training loop runs; made before the process group's threads
  const auto env = peft::distributed::Environment::from_env();
  const auto group = peft::distributed::init_gloo(env);
  torch::manual_seed(0);
  peft_bench::LlamaShaped model = peft_bench::lora_training_model();
  peft::distributed::broadcast_trainable(model, *group);
  torch::manual_seed(1 + env.rank);  // each rank its own shard
  const torch::Tensor tokens = torch::randn({4, 64, 512});
  torch::optim::AdamW optimizer(peft::trainable_tensors(model), torch::optim::AdamWOptions(1e-3));

  Clock::duration total{}, reducing{};
  for (int i = -2; i < steps; ++i) {
    const auto start = Clock::now();
    optimizer.zero_grad();
    model->forward(tokens).pow(2).mean().backward();
    const auto reduce_start = Clock::now();
    peft::distributed::all_reduce_gradients(model, *group);
    const auto reduce_end = Clock::now();
    optimizer.step();
    if (i >= 0) total += Clock::now() - start, reducing += reduce_end - reduce_start;
  }
  int64_t gradient_bytes = 0;
  for (const auto& tensor : peft::trainable_tensors(model)) gradient_bytes += tensor.numel() * tensor.element_size();
  if (env.rank == 0) {
    std::ofstream(out) << nlohmann::json{{"world_size", env.world_size},
                                         {"step_ms", 1e3 * seconds(total) / steps},
                                         {"all_reduce_ms", 1e3 * seconds(reducing) / steps},
                                         {"all_reduced_bytes_per_step", env.world_size > 1 ? gradient_bytes : 0},
                                         {"adapter_gradient_bytes", gradient_bytes}}
                                .dump();
  }
  return 0;
}

nlohmann::json run(int ranks, int steps) {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) throw std::runtime_error("cannot find this program (/proc/self/exe)");
  self[n] = '\0';
  const std::string out = "/tmp/peft_bench_distributed_" + std::to_string(::getpid()) + "_" + std::to_string(ranks);
  const int rc = peft::distributed::launch(ranks, {self, "--worker", out, std::to_string(steps)});
  if (rc != 0) throw std::runtime_error(std::to_string(ranks) + " ranks failed with exit code " + std::to_string(rc));
  nlohmann::json result = nlohmann::json::parse(std::ifstream(out));
  std::remove(out.c_str());
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 4 && std::string(argv[1]) == "--worker") return worker(argv[2], std::stoi(argv[3]));
    const int steps = argc > 1 ? std::stoi(argv[1]) : 20;
    // One thread per rank in both runs, OpenBLAS's too (it reads OMP_NUM_THREADS at start): peft-cpp launch sets it
    // only for jobs of several processes, and the one-rank run would otherwise get a BLAS thread per core.
    ::setenv("OMP_NUM_THREADS", "1", /*overwrite=*/0);
    const nlohmann::json one = run(1, steps), two = run(2, steps);
    std::cout << nlohmann::json{{"one_rank", one},
                                {"two_ranks", two},
                                {"overhead", two["step_ms"].get<double>() / one["step_ms"].get<double>() - 1}}
                     .dump(2)
              << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "peft_bench_distributed: " << e.what() << "\n";
    return 1;
  }
}
