// 3. Loading the 7B-shaped adapter (160 MB) from a file in the page cache into an injected model, as a
// fraction of memcpy bandwidth measured in the same run.

#include <cstring>
#include <filesystem>

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <peft/peft.h>

#include "llama_shaped.h"

namespace peft_bench::load_bench {
namespace {

peft::LoraConfig lora() { return peft::LoraConfig().r(16).lora_alpha(32).target_modules(kProjections); }

// The adapter file, written once per process.
const std::string& adapter_file() {
  static const std::string path = [] {
    LlamaShaped probe(32, 4096, 11008, BaseWeights::Meta);
    peft::inject_adapter_in_model(lora(), probe, "default", true);
    peft::StateDict weights;
    torch::manual_seed(0);
    for (const auto& item : peft::get_peft_model_state_dict(*probe)) weights.insert(item.key(), torch::randn(item.value().sizes()));
    const std::string file =
        (std::filesystem::temp_directory_path() / ("peft_bench_adapter_" + std::to_string(::getpid()) + ".safetensors")).string();
    peft::safetensors::save_file(weights, file);
    std::atexit([] { std::filesystem::remove(adapter_file()); });
    return file;
  }();
  return path;
}

int64_t adapter_bytes() { return static_cast<int64_t>(std::filesystem::file_size(adapter_file())); }

void MemcpyBaseline(benchmark::State& state) {
  const size_t size = static_cast<size_t>(adapter_bytes());
  std::vector<char> from(size, 1), to(size, 0);
  for (auto _ : state) {
    std::memcpy(to.data(), from.data(), size);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(size));
}
BENCHMARK(MemcpyBaseline)->Unit(benchmark::kMillisecond);

// mmap: tensors view the mapped file (copy-on-write) and the adapter adopts them: no bytes are copied.
// read: the file is read into memory first (LoadOptions{mmap=false}), then adopted.
void LoadAdapterFile(benchmark::State& state, bool mmap) {
  const std::string& file = adapter_file();
  for (auto _ : state) {
    state.PauseTiming();
    LlamaShaped model(32, 4096, 11008, BaseWeights::Cpu);
    peft::inject_adapter_in_model(lora(), model, "default", true);
    state.ResumeTiming();
    peft::safetensors::LoadOptions options;
    options.mmap = mmap;
    const peft::StateDict weights = peft::safetensors::load_file(file, options);
    peft::set_peft_model_state_dict(*model, weights, "default", true);
    benchmark::DoNotOptimize(model->named_parameters()["model.layers.31.mlp.down_proj.lora_B.default.weight"].data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * adapter_bytes());
}
BENCHMARK_CAPTURE(LoadAdapterFile, mmap, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(LoadAdapterFile, read, false)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace peft_bench::load_bench
