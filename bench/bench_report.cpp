// Turns a peft_bench JSON run (--benchmark_format=json) and a peft_bench_memory result into bench/README.md's
// table: benchmark, Python PEFT, peft-cpp, ratio, target, met.
//
//   peft_bench_report BENCH_JSON MEMORY_JSON [DISTRIBUTED_JSON [ONE_THREAD_TRAINING_JSON [CPU_MEMORY_CACHE_JSON]]]
//
// ONE_THREAD_TRAINING_JSON: peft_bench's TrainStep* run with OMP_NUM_THREADS=1 (one thread for torch and OpenBLAS).
// CPU_MEMORY_CACHE_JSON: peft_bench_cpu_memory_cache's output.

#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

namespace {

std::map<std::string, nlohmann::json> runs;

// By name, ignoring Google Benchmark's suffixes ("/manual_time", "/repeats:5"); for repeated benchmarks
// the median.
const nlohmann::json& get(const std::string& name) {
  const nlohmann::json* found = nullptr;
  for (const auto& [key, value] : runs) {
    if (key != name && key.compare(0, name.size() + 1, name + "/") != 0) continue;
    const bool median = key.size() > 7 && key.compare(key.size() - 7, 7, "_median") == 0;
    if (median) return value;
    if (!found) found = &value;
  }
  if (!found) throw std::runtime_error("benchmark '" + name + "' missing from the run");
  return *found;
}

double time_of(const std::string& name) { return get(name)["real_time"].get<double>(); }

std::string fixed(double value, int digits) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(digits);
  os << value;
  return os.str();
}

std::string signed_percent(double fraction) { return (fraction >= 0 ? "+" : "") + fixed(fraction * 100, 2) + " %"; }

void row(const std::string& what, const std::string& python, const std::string& ours, const std::string& ratio,
         const std::string& target, bool met) {
  std::cout << "| " << what << " | " << python << " | " << ours << " | " << ratio << " | " << target << " | "
            << (met ? "yes" : "**no**") << " |\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 6) {
    std::cerr << "usage: peft_bench_report BENCH_JSON MEMORY_JSON [DISTRIBUTED_JSON [ONE_THREAD_TRAINING_JSON "
                 "[CPU_MEMORY_CACHE_JSON]]]\n";
    return 1;
  }
  const nlohmann::json bench = nlohmann::json::parse(std::ifstream(argv[1]));
  for (const auto& b : bench["benchmarks"]) runs[b["name"].get<std::string>()] = b;
  const nlohmann::json memory = nlohmann::json::parse(std::ifstream(argv[2]));

  std::cout << "| benchmark | Python PEFT | peft-cpp | ratio | target | met |\n|---|---|---|---|---|---|\n";
  const std::vector<std::pair<std::string, std::string>> injections = {
      {"Inject/llama7b_meta_low_cpu/manual_time", "inject 7B, meta base, low_cpu_mem_usage"},
      {"Inject/llama7b_meta/manual_time", "inject 7B, meta base"},
      {"Inject/llama7b_cpu_low_cpu/manual_time", "inject 7B, CPU base, low_cpu_mem_usage"},
      {"Inject/llama7b_cpu/manual_time", "inject 7B, CPU base (adapters allocated + initialised)"},
      {"Inject/small_cpu_filled_low_cpu/manual_time", "inject 8x1024, filled CPU base, low_cpu_mem_usage"},
      {"Inject/small_cpu_filled/manual_time", "inject 8x1024, filled CPU base"}};
  for (const auto& [name, what] : injections) {
    const auto& b = get(name);
    const double speedup = b["speedup_vs_python"].get<double>();
    std::string ours = fixed(b["ms"].get<double>(), 2) + " ms";
    // Where the adapters get real, initialised memory, the floor is allocating + drawing their values.
    const bool initialised = name == "Inject/llama7b_cpu/manual_time" || name == "Inject/small_cpu_filled/manual_time";
    if (initialised) {
      const double floor = time_of(name.find("llama7b") != std::string::npos ? "AdapterInitBaseline/llama7b" : "AdapterInitBaseline/small");
      ours += " (allocating + initialising the adapter alone: " + fixed(floor, 2) + " ms)";
    }
    row(what, fixed(b["python_ms"].get<double>(), 1) + " ms", ours, fixed(speedup, 1) + "x faster", ">= 30x", speedup >= 30);
  }
  for (const auto& [name, what] : std::vector<std::pair<std::string, std::string>>{
           {"GetStateDict", "get_peft_model_state_dict 7B (448 tensors)"},
           {"SetStateDict/llama7b_low_cpu", "set_peft_model_state_dict 7B, low_cpu_mem_usage (adopts)"},
           {"SetStateDict/llama7b", "set_peft_model_state_dict 7B (copies)"}}) {
    const auto& b = get(name);
    const double speedup = b["speedup_vs_python"].get<double>();
    std::string ours = fixed(b["ms"].get<double>(), 2) + " ms";
    if (b.contains("zero_copy")) ours += b["zero_copy"].get<double>() > 0 ? ", zero-copy" : ", copied";
    if (name == "SetStateDict/llama7b") ours += " (memcpy of the 160 MB: " + fixed(time_of("MemcpyBaseline"), 2) + " ms)";
    row(what, fixed(b["python_ms"].get<double>(), 1) + " ms", ours, fixed(speedup, 1) + "x faster", ">= 10x", speedup >= 10);
  }
  const double memcpy_bps = get("MemcpyBaseline")["bytes_per_second"].get<double>();
  for (const auto& [name, what] : std::vector<std::pair<std::string, std::string>>{
           {"LoadAdapterFile/mmap", "load 160 MB adapter file (mmap) + set_peft_model_state_dict"},
           {"LoadAdapterFile/read", "load 160 MB adapter file (read) + set_peft_model_state_dict"}}) {
    const double bps = get(name)["bytes_per_second"].get<double>();
    row(what, "-", fixed(bps / 1e9, 2) + " GB/s (memcpy " + fixed(memcpy_bps / 1e9, 2) + " GB/s)",
        fixed(bps / memcpy_bps, 2) + "x memcpy", ">= 0.8x memcpy", bps / memcpy_bps >= 0.8);
  }
  // LoRA r=16 on 4096x4096 adds 2 * 16 * (4096 + 4096) flops per token to 2 * 4096 * 4096.
  const double flop_share = 16.0 * (4096 + 4096) / (4096.0 * 4096.0);
  for (const char* tokens : {"8x128", "1_token"}) {
    const std::string t = tokens;
    const auto& run = get("Linear4096/" + t);
    const bool batch = t == "8x128";
    const double scale = batch ? 1e-3 : 1;  // ms for the batch, us for one token
    const std::string unit = batch ? " ms" : " us";
    const double plain = run["plain_us"].get<double>() * scale, unmerged = run["unmerged_us"].get<double>() * scale,
                 merged = run["merged_us"].get<double>() * scale, gemms = run["gemms_alone_us"].get<double>() * scale;
    const double unmerged_extra = run["unmerged_over_plain"].get<double>() - 1,
                 merged_extra = run["merged_over_plain"].get<double>() - 1,
                 gemms_extra = run["gemms_alone_over_plain"].get<double>();
    row("Linear(4096) LoRA r=16 unmerged, " + t, "see TIMINGS.md (c)",
        fixed(unmerged, 2) + " vs plain " + fixed(plain, 2) + unit + "; the two rank-16 GEMMs alone: " + fixed(gemms, 2) +
            unit + " (+" + fixed(gemms_extra * 100, 2) + " %)",
        signed_percent(unmerged_extra), batch ? "<= +" + fixed(1.5 * flop_share * 100, 2) + " % (1.5x the flop share)" : "report",
        !batch || unmerged_extra <= 1.5 * flop_share);
    row("Linear(4096) LoRA merged, " + t, "-", fixed(merged, 2) + " vs plain " + fixed(plain, 2) + unit,
        signed_percent(merged_extra), "equal within noise (2 %)", std::abs(merged_extra) <= 0.02);
  }
  {
    const double plain = time_of("SmallLayers/plain"), lora = time_of("SmallLayers/lora_unmerged");
    row("7B tree at hidden 256, 1 token, LoRA on all 224 projections", "-",
        fixed(lora, 0) + " vs plain " + fixed(plain, 0) + " us", fixed(lora / plain, 2) + "x", "report", true);
    const auto& interleaved = get("RoutingWithoutAdapter");
    const double direct = interleaved["direct_ns"].get<double>(), routed = interleaved["routed_ns"].get<double>();
    const double decision = time_of("RoutingDecision");
    row("Linear(256) 1-token call on a layer without adapter: the routing decision vs the call", "-",
        fixed(decision, 1) + " ns vs " + fixed(direct, 0) + " ns", fixed(decision / direct * 100, 2) + " %", "< 1 %",
        decision / direct < 0.01);
    row("the same call end to end, routed vs LibTorch's forward (alternating blocks)", "-",
        fixed(routed, 0) + " vs " + fixed(direct, 0) + " ns", fixed((routed / direct - 1) * 100, 2) + " %",
        "report (VM noise ~1 %)", true);
  }
  {
    // TorchScript models: the same 224-projection tree, scripted, next to the torch::nn model in the same iterations.
    const auto& inject = get("TorchScriptInject");
    row("inject LoRA r=16 into a TorchScript 7B tree at hidden 256 (224 targets) vs the same torch::nn model", "-",
        fixed(inject["torchscript_ms"].get<double>(), 1) + " vs " + fixed(inject["torch_nn_ms"].get<double>(), 1) + " ms",
        fixed(inject["torchscript_over_torch_nn"].get<double>(), 2) + "x torch::nn", "report", true);
    const auto& forward = get("TorchScriptForward");
    row("TorchScript 7B tree at hidden 256, 1 token, unmerged LoRA on all 224 projections vs its plain forward", "-",
        fixed(forward["torchscript_lora_us"].get<double>(), 0) + " vs plain " +
            fixed(forward["torchscript_plain_us"].get<double>(), 0) + " us (torch::nn: " +
            fixed(forward["torch_nn_lora_us"].get<double>(), 0) + " vs " + fixed(forward["torch_nn_plain_us"].get<double>(), 0) +
            " us)",
        fixed(forward["torchscript_lora_over_plain"].get<double>(), 2) + "x (torch::nn " +
            fixed(forward["torch_nn_lora_over_plain"].get<double>(), 2) + "x)",
        "report", true);
  }
  {
    const double one = get("MixedBatch/1")["items_per_second"].get<double>();
    for (const char* k : {"8", "64"}) {
      const double mixed = get(std::string("MixedBatch/") + k)["items_per_second"].get<double>();
      const bool eight = std::string(k) == "8";
      row(std::string("64 rows over ") + k + " adapters vs one adapter", "-",
          fixed(mixed, 0) + " vs " + fixed(one, 0) + " rows/s", fixed(mixed / one, 2) + "x", eight ? ">= 0.8x" : "report",
          !eight || mixed / one >= 0.8);
    }
  }
  const double growth = memory["growth_over_adapter"].get<double>();
  row("peak RSS growth, inject + load 7B adapter (low_cpu_mem_usage)", "443 MiB peak (incl. 263 MiB torch)",
      std::to_string(memory["growth_kb"].get<int64_t>() / 1024) + " MiB for a " +
          std::to_string(memory["adapter_kb"].get<int64_t>() / 1024) + " MiB adapter",
      fixed(growth, 2) + "x adapter", "<= 1.10x adapter", growth <= 1.10);
  auto training_rows = [](const std::string& threads) {
    for (const auto& [name, what] : std::vector<std::pair<std::string, std::string>>{
             {"TrainStepClassifier", "LoRA training step, Fashion-MNIST example MLP (batch 128)"},
             {"TrainStepLlama", "LoRA training step, Llama-shaped 4x512 stack, r=16 on q,v (4x64 tokens)"}}) {
      const auto& b = get(name);
      const double ours = b["steps_per_s"].get<double>(), python = b["python_steps_per_s"].get<double>();
      row(what + ", " + threads, fixed(python, 1) + " steps/s",
          fixed(ours, 1) + " steps/s with peft::CpuMemoryCache (without: " +
              fixed(b["no_cache_steps_per_s"].get<double>(), 1) + "; the frozen base's own forward + backward: " +
              fixed(b["base_fwd_bwd_per_s"].get<double>(), 1) + "/s; full fine-tuning: " +
              fixed(b["full_finetune_steps_per_s"].get<double>(), 1) + " steps/s)",
          fixed(ours / python, 2) + "x Python", ">= 1.2x Python", ours / python >= 1.2);
    }
  };
  training_rows("default threads");
  if (argc >= 5) {
    // The one-thread run's TrainStep* replace the default run's in the lookup table.
    const nlohmann::json one_thread = nlohmann::json::parse(std::ifstream(argv[4]));
    for (const auto& b : one_thread["benchmarks"]) runs[b["name"].get<std::string>()] = b;
    training_rows("one thread (OMP_NUM_THREADS=1)");
  }
  if (argc >= 4) {
    const nlohmann::json distributed = nlohmann::json::parse(std::ifstream(argv[3]));
    const auto& one = distributed["one_rank"];
    const auto& two = distributed["two_ranks"];
    const double overhead = distributed["overhead"].get<double>();
    row("data-parallel step, Llama-shaped stack r=16, 2 ranks x 1 thread vs 1 rank x 1 thread (same per-rank batch)",
        "-",
        fixed(two["step_ms"].get<double>(), 1) + " vs " + fixed(one["step_ms"].get<double>(), 1) +
            " ms (all-reduce: " + fixed(two["all_reduce_ms"].get<double>(), 2) + " ms)",
        signed_percent(overhead), "<= +15 %", overhead <= 0.15);
    const int64_t bytes = two["all_reduced_bytes_per_step"].get<int64_t>();
    const int64_t adapter = two["adapter_gradient_bytes"].get<int64_t>();
    row("bytes all-reduced per step (2 ranks)", "-",
        std::to_string(bytes) + " B (adapter gradients: " + std::to_string(adapter) + " B)",
        fixed(static_cast<double>(bytes) / static_cast<double>(adapter), 2) + "x adapter gradients", "report", true);
  }
  if (argc == 6) {
    const nlohmann::json cache = nlohmann::json::parse(std::ifstream(argv[5]));
    const auto& with = cache["with_cache"];
    const auto& without = cache["without_cache"];
    row("LoRA step, Llama-shaped stack, a process of its own: inside peft::CpuMemoryCache vs LibTorch's allocator",
        "-",
        fixed(with["steps_per_s"].get<double>(), 2) + " vs " + fixed(without["steps_per_s"].get<double>(), 2) +
            " steps/s (minor page faults per step: " + fixed(with["minor_faults_per_step"].get<double>(), 0) + " vs " +
            fixed(without["minor_faults_per_step"].get<double>(), 0) + ")",
        fixed(cache["speedup"].get<double>(), 2) + "x", "report", true);
  }
  return 0;
}
