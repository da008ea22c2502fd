// 6. Peak memory of injecting the 7B-shaped LoRA (low_cpu_mem_usage) into a model and loading its 160 MB
// adapter file, measured with getrusage in a process of its own. Prints one JSON object.
//
//   peft_bench_memory ADAPTER_FILE
// A first run writes ADAPTER_FILE and exits (so writing it does not count); the second measures.

#include <sys/resource.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include <peft/peft.h>

#include "llama_shaped.h"

namespace {

int64_t current_rss_kb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

int64_t peak_rss_kb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace peft_bench;
  if (argc != 2) {
    std::cerr << "usage: peft_bench_memory ADAPTER_FILE\n";
    return 1;
  }
  const std::string file = argv[1];
  const auto config = peft::LoraConfig().r(16).lora_alpha(32).target_modules(kProjections);
  if (!std::filesystem::exists(file)) {
    LlamaShaped probe(32, 4096, 11008, BaseWeights::Meta);
    peft::inject_adapter_in_model(config, probe, "default", true);
    peft::StateDict weights;
    for (const auto& item : peft::get_peft_model_state_dict(*probe)) weights.insert(item.key(), torch::randn(item.value().sizes()));
    peft::safetensors::save_file(weights, file);
    std::cout << "wrote " << file << "; run again to measure\n";
    return 0;
  }
  const int64_t adapter_kb = static_cast<int64_t>(std::filesystem::file_size(file) / 1024);
  // Base weights in real CPU memory that is never touched (as in Python's reference run), so they do not
  // count; what grows is PEFT's own memory.
  LlamaShaped model(32, 4096, 11008, BaseWeights::Cpu);
  const int64_t before = current_rss_kb();
  peft::inject_adapter_in_model(config, model, "default", true);
  const int64_t after_inject = current_rss_kb();
  const peft::StateDict weights = peft::safetensors::load_file(file);
  peft::set_peft_model_state_dict(*model, weights, "default", true);
  // Touch every adapter byte (a real forward would), so mapped pages count.
  double sum = 0;
  for (const auto& p : model->named_parameters()) {
    if (p.key().find("lora_") != std::string::npos) sum += p.value().sum().item<double>();
  }
  const int64_t after_load = current_rss_kb();
  const int64_t peak = peak_rss_kb();
  nlohmann::json out = {{"adapter_kb", adapter_kb},       {"rss_before_inject_kb", before},
                        {"rss_after_inject_kb", after_inject}, {"rss_after_load_kb", after_load},
                        {"peak_rss_kb", peak},              {"growth_kb", peak - before},
                        {"growth_over_adapter", static_cast<double>(peak - before) / static_cast<double>(adapter_kb)},
                        {"checksum", sum}};
  std::cout << out.dump() << "\n";
  return 0;
}
