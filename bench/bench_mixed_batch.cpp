// 5. A batch of 64 rows spread over K LoRA adapters (AdapterNamesPerSample) vs the same batch through one
// adapter.

#include <benchmark/benchmark.h>

#include <peft/peft.h>

namespace peft_bench::mixed_batch_bench {
namespace {

struct OneLinearImpl : torch::nn::Module {
  torch::nn::Linear lin{nullptr};
  OneLinearImpl() { lin = register_module("lin", torch::nn::Linear(1024, 1024)); }
  torch::Tensor forward(const torch::Tensor& x) { return lin(x); }
};
TORCH_MODULE(OneLinear);

void MixedBatch(benchmark::State& state) {
  const int64_t adapters = state.range(0);
  torch::manual_seed(0);
  OneLinear model;
  model->eval();
  for (int64_t k = 0; k < adapters; ++k) {
    peft::inject_adapter_in_model(peft::LoraConfig().r(16).lora_alpha(32).target_modules({"lin"}).init_lora_weights(false),
                                  model, "a" + std::to_string(k));
  }
  std::vector<std::string> names;
  for (int64_t row = 0; row < 64; ++row) names.push_back("a" + std::to_string(row % adapters));
  const torch::Tensor x = torch::randn({64, 16, 1024});
  torch::NoGradGuard no_grad;
  if (adapters == 1) {
    // The baseline: one adapter, set as the active one, no per-sample routing.
    peft::set_adapter(*model, "a0");
    for (auto _ : state) benchmark::DoNotOptimize(model->forward(x));
  } else {
    for (auto _ : state) {
      peft::AdapterNamesPerSample routing(*model, names);
      benchmark::DoNotOptimize(model->forward(x));
    }
  }
  state.SetItemsProcessed(state.iterations() * 64);
}
BENCHMARK(MixedBatch)->Arg(1)->Arg(8)->Arg(64)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace peft_bench::mixed_batch_bench
