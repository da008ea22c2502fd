// 7. TorchScript models (<peft/torchscript.h>): injecting LoRA into a scripted Llama-shaped stack (32 layers x 7
// projections = 224 targets, hidden 256) vs into the same torch::nn model, and a one-token forward with the unmerged
// adapter vs the same model's plain forward, next to the torch::nn figures measured in the same iterations.

#include <chrono>

#include <benchmark/benchmark.h>

#include <torch/csrc/jit/api/module.h>

#include <peft/peft.h>
#include <peft/torchscript.h>

#include "llama_shaped.h"

namespace peft_bench::torchscript_bench {
namespace {

constexpr int64_t kLayers = 32, kHidden = 256, kIntermediate = 688;

// The TorchScript form of LlamaShaped, sharing its weights: every submodule its own class type, as in a traced
// export, and each projection's forward the aten::linear a scripted or traced nn.Linear has.
torch::jit::Module script_llama(LlamaShaped& nn_model) {
  auto unit = std::make_shared<torch::jit::CompilationUnit>();
  const auto module = [&](const std::string& name) {
    return torch::jit::Module(c10::QualifiedName("__torch__." + name), unit, /*shouldMangle=*/true);
  };
  torch::jit::Module root = module("LlamaForCausalLM"), model = module("LlamaModel"), layers = module("ModuleList");
  std::string model_forward = "def forward(self, x: Tensor) -> Tensor:\n";
  for (int64_t i = 0; i < kLayers; ++i) {
    torch::jit::Module layer = module("LlamaDecoderLayer"), attn = module("LlamaAttention"), mlp = module("LlamaMLP");
    for (size_t p = 0; p < kProjections.size(); ++p) {
      torch::jit::Module linear = module("Linear");
      linear.register_parameter("weight", nn_model->projections[i][p]->weight, false);
      linear.define("def forward(self, x: Tensor) -> Tensor:\n  return torch.linear(x, self.weight)\n");
      (p < 4 ? attn : mlp).register_module(kProjections[p], linear);
    }
    attn.define("def forward(self, x: Tensor) -> Tensor:\n  return self.o_proj.forward(self.q_proj.forward(x) + self.k_proj.forward(x) + self.v_proj.forward(x))\n");
    mlp.define("def forward(self, x: Tensor) -> Tensor:\n  return self.down_proj.forward(self.gate_proj.forward(x) * self.up_proj.forward(x))\n");
    layer.register_module("self_attn", attn);
    layer.register_module("mlp", mlp);
    layer.define("def forward(self, x: Tensor) -> Tensor:\n  x = x + self.self_attn.forward(x)\n  return x + self.mlp.forward(x)\n");
    layers.register_module(std::to_string(i), layer);
    model_forward += "  x = getattr(self.layers, \"" + std::to_string(i) + "\").forward(x)\n";
  }
  model.register_module("layers", layers);
  model.define(model_forward + "  return x\n");
  root.register_module("model", model);
  root.define("def forward(self, x: Tensor) -> Tensor:\n  return self.model.forward(x)\n");
  root.eval();
  return root;
}

const peft::LoraConfig& lora() {
  static const auto config = peft::LoraConfig().r(16).lora_alpha(32).target_modules(kProjections).init_lora_weights(false);
  return config;
}

using Clock = std::chrono::steady_clock;
double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

void TorchScriptInject(benchmark::State& state) {
  torch::manual_seed(0);
  Clock::duration scripted{}, nn{};
  for (auto _ : state) {
    state.PauseTiming();
    LlamaShaped nn_model(kLayers, kHidden, kIntermediate, BaseWeights::Filled);
    LlamaShaped shadow(kLayers, kHidden, kIntermediate, BaseWeights::Filled);
    torch::jit::Module model = script_llama(shadow);
    state.ResumeTiming();
    const auto t0 = Clock::now();
    peft::inject_adapter_in_model(lora(), model);
    const auto t1 = Clock::now();
    peft::inject_adapter_in_model(lora(), nn_model);
    const auto t2 = Clock::now();
    scripted += t1 - t0, nn += t2 - t1;
  }
  state.counters["torchscript_ms"] = ms(scripted) / state.iterations();
  state.counters["torch_nn_ms"] = ms(nn) / state.iterations();
  state.counters["torchscript_over_torch_nn"] = ms(scripted) / ms(nn);
}
BENCHMARK(TorchScriptInject)->Unit(benchmark::kMillisecond)->Iterations(5);

void TorchScriptForward(benchmark::State& state) {
  torch::manual_seed(0);
  LlamaShaped nn_plain(kLayers, kHidden, kIntermediate, BaseWeights::Filled);
  LlamaShaped nn_lora(kLayers, kHidden, kIntermediate, BaseWeights::Filled);
  LlamaShaped shared_plain(kLayers, kHidden, kIntermediate, BaseWeights::Filled);
  LlamaShaped shared_lora(kLayers, kHidden, kIntermediate, BaseWeights::Filled);
  torch::jit::Module script_plain = script_llama(shared_plain), script_lora = script_llama(shared_lora);
  peft::inject_adapter_in_model(lora(), nn_lora);
  peft::inject_adapter_in_model(lora(), script_lora);
  nn_plain->eval(), nn_lora->eval();
  const torch::Tensor x = torch::randn({1, kHidden});
  torch::NoGradGuard no_grad;
  std::array<Clock::duration, 4> spent{};
  const auto timed = [&](int slot, auto&& work) {
    const auto start = Clock::now();
    benchmark::DoNotOptimize(work());
    spent[slot] += Clock::now() - start;
  };
  const auto run = [&](torch::jit::Module& m) { return m.forward({x}).toTensor(); };
  for (int i = 0; i < 3; ++i) run(script_plain), run(script_lora), nn_plain->forward(x), nn_lora->forward(x);
  for (auto _ : state) {
    timed(0, [&] { return run(script_plain); });
    timed(1, [&] { return run(script_lora); });
    timed(2, [&] { return nn_plain->forward(x); });
    timed(3, [&] { return nn_lora->forward(x); });
  }
  const char* names[] = {"torchscript_plain_us", "torchscript_lora_us", "torch_nn_plain_us", "torch_nn_lora_us"};
  for (int slot = 0; slot < 4; ++slot) {
    state.counters[names[slot]] = std::chrono::duration<double, std::micro>(spent[slot]).count() / state.iterations();
  }
  state.counters["torchscript_lora_over_plain"] = double(spent[1].count()) / double(spent[0].count());
  state.counters["torch_nn_lora_over_plain"] = double(spent[3].count()) / double(spent[2].count());
}
BENCHMARK(TorchScriptForward)->Unit(benchmark::kMillisecond)->Repetitions(3);

}  // namespace
}  // namespace peft_bench::torchscript_bench
