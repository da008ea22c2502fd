// The threading promise of <peft/lifecycle.h>: forwards on any number of threads while another thread
// switches which (frozen) adapters run. Every forward must equal the output of exactly one adapter set;
// the ThreadSanitizer build (PEFT_TSAN, run in CI) checks that no memory is raced on while it happens.

#include <atomic>
#include <chrono>
#include <thread>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"

namespace peft_test::threads_test {
namespace {

struct TwoLayersImpl : torch::nn::Module {
  peft_test::nn::Linear first{nullptr}, second{nullptr};
  TwoLayersImpl() {
    first = register_module("first", peft_test::nn::Linear(16, 16));
    second = register_module("second", peft_test::nn::Linear(16, 16));
  }
  torch::Tensor forward(const torch::Tensor& x) { return second(torch::relu(first(x))); }
};
TORCH_MODULE(TwoLayers);

// LoRA adapters "a"/"b" on `first` and LoHa adapters "c"/"d" on `second`, all loaded for inference (frozen).
TwoLayers frozen_model() {
  torch::manual_seed(0);
  TwoLayers model;
  model->eval();
  auto lora = peft::LoraConfig().r(4).init_lora_weights(false).target_modules({"first"}).inference_mode(true);
  auto loha = peft::LoHaConfig().r(2).init_weights(false).target_modules({"second"}).inference_mode(true);
  peft::inject_adapter_in_model(lora, model, "a");
  peft::inject_adapter_in_model(lora, model, "b");
  peft::inject_adapter_in_model(loha, model, "c");
  peft::inject_adapter_in_model(loha, model, "d");
  return model;
}

// Workers keep going for at least half a second (so the switcher gets many turns, which is what a race
// detector needs to see) and until both adapter sets were seen, up to a generous deadline.
bool still_needed(std::chrono::steady_clock::time_point start, std::chrono::steady_clock::time_point deadline,
                  bool saw_both) {
  const auto now = std::chrono::steady_clock::now();
  return now < deadline && (now - start < std::chrono::milliseconds(500) || !saw_both);
}

std::vector<bool> requires_grad_flags(const torch::nn::Module& model) {
  std::vector<bool> flags;
  for (const auto& p : model.parameters()) flags.push_back(p.requires_grad());
  return flags;
}

TEST(Threads, SwitchingFrozenAdaptersChangesNoRequiresGradFlag) {
  TwoLayers model = frozen_model();
  const std::vector<bool> before = requires_grad_flags(*model);
  EXPECT_EQ(std::count(before.begin(), before.end(), true), 0);
  peft::set_adapter(model, {"b", "d"}, /*inference_mode=*/true);
  peft::disable_adapters(model);
  peft::enable_adapters(model);
  { peft::DisabledAdapters off(model); }
  EXPECT_EQ(requires_grad_flags(*model), before);
  // The contrast the header draws: without inference_mode, set_adapter makes the adapter trainable.
  peft::set_adapter(model, {"a", "c"});
  const std::vector<bool> after = requires_grad_flags(*model);
  EXPECT_GT(std::count(after.begin(), after.end(), true), 0);
}

TEST(Threads, ForwardWhileSwitchingNeverMixesAdapters) {
  TwoLayers model = frozen_model();
  const at::Tensor x = torch::randn({4, 16});
  const std::vector<std::string> set_one{"a", "c"}, set_two{"b", "d"};
  peft::set_adapter(model, set_one, true);
  const at::Tensor out_one = model->forward(x).detach();
  peft::set_adapter(model, set_two, true);
  const at::Tensor out_two = model->forward(x).detach();
  const at::Tensor out_base = [&] {
    peft::DisabledAdapters off(model);
    return model->forward(x).detach();
  }();
  ASSERT_FALSE(torch::equal(out_one, out_two));

  std::atomic<bool> stop{false};
  std::atomic<int> done{0}, saw_one{0}, saw_two{0}, saw_base{0}, other{0};
  std::thread switcher([&] {
    for (int i = 0; !stop; ++i) {
      peft::set_adapter(model, i % 2 == 0 ? set_one : set_two, /*inference_mode=*/true);
      if (i % 5 == 0) peft::disable_adapters(model), peft::enable_adapters(model);
      std::this_thread::yield();
    }
  });
  // Each worker runs at least 200 forwards (autograd on: the frozen flags are read, never written); see
  // still_needed. A forward through two layers that overlaps a switch may combine the old
  // set's first layer with the new set's second: those count as `other`, and must be rare, not absent.
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::seconds(120);
  std::vector<std::thread> workers;
  for (int w = 0; w < 3; ++w) {
    workers.emplace_back([&] {
      for (int i = 0; i < 200 || still_needed(start, deadline, saw_one > 0 && saw_two > 0); ++i) {
        const at::Tensor y = model->forward(x).detach();
        if (torch::equal(y, out_one)) {
          ++saw_one;
        } else if (torch::equal(y, out_two)) {
          ++saw_two;
        } else if (torch::equal(y, out_base)) {
          ++saw_base;
        } else {
          ++other;
        }
        ++done;
      }
    });
  }
  for (auto& w : workers) w.join();
  stop = true;
  switcher.join();
  EXPECT_GE(done.load(), 600);
  EXPECT_GT(saw_one.load(), 0);  // the switches really happened while forwards ran
  EXPECT_GT(saw_two.load(), 0);
  EXPECT_LT(other.load(), done.load() / 2);
}

// One adapted layer: then a forward can only ever see one whole set.
TEST(Threads, OneLayerNeverMixesAdapters) {
  torch::manual_seed(0);
  torch::nn::Sequential model(peft_test::nn::Linear(32, 32));
  model->eval();
  auto lora = peft::LoraConfig().init_lora_weights(false).target_modules({"0"}).inference_mode(true);
  peft::inject_adapter_in_model(lora.r(4), model, "a");
  peft::inject_adapter_in_model(lora.r(8), model, "b");
  const at::Tensor x = torch::randn({4, 32});
  torch::NoGradGuard no_grad;
  peft::set_adapter(model, "a", true);
  const at::Tensor out_a = model->forward(x);
  peft::set_adapter(model, "b", true);
  const at::Tensor out_b = model->forward(x);
  const at::Tensor out_base = [&] {
    peft::DisabledAdapters off(model);
    return model->forward(x);
  }();
  std::atomic<bool> stop{false};
  std::atomic<int> mixed{0}, done{0}, saw_a{0}, saw_b{0};
  std::thread switcher([&] {
    for (int i = 0; !stop; ++i) {
      peft::set_adapter(model, i % 2 == 0 ? "a" : "b", true);
      if (i % 7 == 0) peft::disable_adapters(model), peft::enable_adapters(model);
      std::this_thread::yield();
    }
  });
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::seconds(120);
  std::vector<std::thread> workers;
  for (int w = 0; w < 3; ++w) {
    workers.emplace_back([&] {
      torch::NoGradGuard no_grad_here;
      for (int i = 0; i < 200 || still_needed(start, deadline, saw_a > 0 && saw_b > 0); ++i) {
        const at::Tensor y = model->forward(x);
        const bool a = torch::equal(y, out_a), b = torch::equal(y, out_b);
        saw_a += a, saw_b += b;
        if (!a && !b && !torch::equal(y, out_base)) ++mixed;
        ++done;
      }
    });
  }
  // Meanwhile this thread serves requests that pin their adapters for the whole forward, whatever set the
  // switcher makes active (disabling all adapters still wins, as in Python PEFT).
  for (int i = 0; i < 50; ++i) {
    peft::AdapterNamesPerSample pin(model, {"a", "a", "b", "b"});
    const at::Tensor y = model->forward(x);
    const bool pinned = torch::allclose(y.narrow(0, 0, 2), out_a.narrow(0, 0, 2), 1e-5, 1e-6) &&
                        torch::allclose(y.narrow(0, 2, 2), out_b.narrow(0, 2, 2), 1e-5, 1e-6);
    EXPECT_TRUE(pinned || torch::equal(y, out_base));
  }
  for (auto& w : workers) w.join();
  stop = true;
  switcher.join();
  EXPECT_GE(done.load(), 600);
  EXPECT_EQ(mixed.load(), 0);
  EXPECT_GT(saw_a.load(), 0);
  EXPECT_GT(saw_b.load(), 0);
}

// peft::CpuMemoryCache serves every thread: training steps on three threads at once (each its own model) reuse
// each other's freed blocks and still compute what one thread alone computes.
TEST(Threads, CpuMemoryCacheServesConcurrentTrainingSteps) {
  // Models and inputs are drawn on this thread (torch::manual_seed is process-wide); the steps draw nothing.
  const auto make = [](int seed) {
    torch::manual_seed(seed);
    TwoLayers model;
    peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"first", "second"}), model);
    return std::make_pair(model, torch::randn({512, 16}));  // 32 KiB activations, freed on every thread
  };
  const auto train = [](TwoLayers model, const at::Tensor& x) {
    torch::optim::SGD optimizer(peft::trainable_tensors(model), torch::optim::SGDOptions(0.1));
    for (int step = 0; step < 20; ++step) {
      optimizer.zero_grad();
      model->forward(x).pow(2).mean().backward();
      optimizer.step();
    }
    return model->second->named_parameters()["lora_B.default.weight"].clone();
  };
  std::vector<at::Tensor> expected;
  for (int seed = 0; seed < 3; ++seed) {
    const auto made = make(seed);
    expected.push_back(train(made.first, made.second));
  }
  std::vector<at::Tensor> got(3);
  {
    peft::CpuMemoryCache cache;
    std::vector<std::thread> workers;
    for (int seed = 0; seed < 3; ++seed) {
      const auto made = make(seed);
      workers.emplace_back([&got, &train, seed, made] { got[seed] = train(made.first, made.second); });
    }
    for (auto& w : workers) w.join();
  }
  for (int seed = 0; seed < 3; ++seed) EXPECT_TRUE(torch::equal(got[seed], expected[seed])) << seed;
  EXPECT_GT(expected[0].abs().sum().item<float>(), 0.f);  // the steps did train
}

}  // namespace
}  // namespace peft_test::threads_test
