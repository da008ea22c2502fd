// peft::CpuMemoryCache: freed CPU tensor memory is reused within its scope, training gives the same bits, and the
// allocator LibTorch had comes back afterwards.

#include <cstdint>

#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <peft/peft.h>

#include "support/layers.h"

namespace peft_test::cpu_memory_cache_test {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

const void* data_of(const torch::Tensor& t) { return t.storage().data(); }

TEST(CpuMemoryCache, HandsAFreedBlockToTheNextTensorOfItsSize) {
  peft::CpuMemoryCache cache;
  EXPECT_EQ(cache.cached_bytes(), 0u);
  torch::Tensor a = torch::empty({static_cast<int64_t>(kMiB)});  // 4 MiB, beyond glibc's mmap threshold
  const void* first = data_of(a);
  a = torch::Tensor();
  EXPECT_EQ(cache.cached_bytes(), 4 * kMiB);
  torch::Tensor b = torch::empty({static_cast<int64_t>(kMiB)});
  EXPECT_EQ(data_of(b), first);
  EXPECT_EQ(cache.cached_bytes(), 0u);
  // Another size does not take it.
  b = torch::Tensor();
  torch::Tensor c = torch::empty({static_cast<int64_t>(kMiB) + 16});
  EXPECT_NE(data_of(c), first);
  EXPECT_EQ(cache.cached_bytes(), 4 * kMiB);
}

TEST(CpuMemoryCache, KeepsLibTorchsAlignment) {
  peft::CpuMemoryCache cache;
  std::vector<torch::Tensor> tensors;
  // Large blocks start at varying offsets within a page (cache colouring); each must still be 64-byte aligned.
  for (int64_t n : {1, 3, 17, 1000, 40000, 300000, 300001, 300002, 1 << 22}) {
    tensors.push_back(torch::full({n}, 1.5));
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(data_of(tensors.back())) % 64, 0u) << n;
  }
  for (const auto& t : tensors) EXPECT_TRUE(torch::all(t == 1.5).item<bool>());
  tensors.clear();
  EXPECT_GT(cache.cached_bytes(), 4u << 22);
  torch::Tensor empty = torch::empty({0});  // no memory at all
  EXPECT_EQ(empty.numel(), 0);
}

TEST(CpuMemoryCache, PutsBackTheAllocatorItReplaced) {
  c10::Allocator* before = c10::GetCPUAllocator();
  torch::Tensor survivor;
  {
    peft::CpuMemoryCache cache;
    EXPECT_NE(c10::GetCPUAllocator(), before);
    survivor = torch::arange(1 << 20, torch::kFloat);
    torch::Tensor freed_inside = torch::ones({1 << 20});
  }
  EXPECT_EQ(c10::GetCPUAllocator(), before);
  // A tensor allocated in the scope outlives it, intact, and is freed normally (AddressSanitizer checks the rest).
  EXPECT_EQ(survivor[12345].item<float>(), 12345.f);
  survivor = torch::Tensor();
  peft::CpuMemoryCache again;  // and a new scope may start
}

TEST(CpuMemoryCache, RefusesASecondCacheAndChangesNothing) {
  peft::CpuMemoryCache cache;
  c10::Allocator* current = c10::GetCPUAllocator();
  try {
    peft::CpuMemoryCache second;
    FAIL() << "a second cache was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("another CpuMemoryCache is alive"), std::string::npos) << e.what();
  }
  EXPECT_EQ(c10::GetCPUAllocator(), current);
  torch::Tensor t = torch::empty({1 << 20});
  t = torch::Tensor();
  EXPECT_EQ(cache.cached_bytes(), 4 * kMiB);  // the first one still caches
}

TEST(CpuMemoryCache, HoldsNoMoreThanItsBound) {
  peft::CpuMemoryCache cache(3 * kMiB);
  torch::Tensor big = torch::empty({static_cast<int64_t>(kMiB)});  // 4 MiB: beyond the bound, goes back at once
  big = torch::Tensor();
  EXPECT_EQ(cache.cached_bytes(), 0u);
  // Two of 2 MiB: the first is kept, the second would pass the bound.
  torch::Tensor a = torch::empty({static_cast<int64_t>(kMiB / 2)}), b = torch::empty({static_cast<int64_t>(kMiB / 2)});
  a = torch::Tensor();
  b = torch::Tensor();
  EXPECT_EQ(cache.cached_bytes(), 2 * kMiB);
}

TEST(CpuMemoryCache, EmptyCacheFreesWhatItHolds) {
  peft::CpuMemoryCache cache;
  torch::Tensor t = torch::empty({static_cast<int64_t>(kMiB)});
  t = torch::Tensor();
  ASSERT_EQ(cache.cached_bytes(), 4 * kMiB);
  cache.empty_cache();
  EXPECT_EQ(cache.cached_bytes(), 0u);
  t = torch::empty({static_cast<int64_t>(kMiB)});
  t = torch::Tensor();
  EXPECT_EQ(cache.cached_bytes(), 4 * kMiB);  // caching goes on
}

struct NetImpl : torch::nn::Module {
  nn::Linear lin0{nullptr}, lin1{nullptr}, head{nullptr};
  NetImpl() {
    lin0 = register_module("lin0", nn::Linear(64, 256));
    lin1 = register_module("lin1", nn::Linear(256, 256));
    head = register_module("head", nn::Linear(256, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(torch::relu(lin1(torch::relu(lin0(x))))); }
};
TORCH_MODULE(Net);

// Six LoRA steps (activations of 256 KiB: large blocks) from the same seed; the adapter after them.
peft::StateDict train_six_steps(peft::CpuMemoryCache* cache) {
  torch::manual_seed(0);
  Net net;
  peft::inject_adapter_in_model(peft::LoraConfig().r(8).lora_alpha(16).lora_dropout(0.1).target_modules({"lin0", "lin1"}),
                                net);
  net->train();
  torch::optim::AdamW optimizer(peft::trainable_tensors(net), torch::optim::AdamWOptions(1e-2));
  const torch::Tensor x = torch::randn({256, 64}), y = torch::randint(0, 4, {256});
  for (int step = 0; step < 6; ++step) {
    optimizer.zero_grad();
    torch::cross_entropy_loss(net->forward(x), y).backward();
    optimizer.step();
    if (cache) EXPECT_GT(cache->cached_bytes(), 256u << 10) << "the step's activations were not cached";
  }
  peft::StateDict adapter = peft::get_peft_model_state_dict(net);
  for (auto& item : adapter) item.value() = item.value().clone();
  return adapter;
}

TEST(CpuMemoryCache, TrainingGivesTheSameBits) {
  const peft::StateDict expected = train_six_steps(nullptr);
  peft::StateDict got;
  {
    peft::CpuMemoryCache cache;
    got = train_six_steps(&cache);
  }
  ASSERT_EQ(got.keys(), expected.keys());
  for (const auto& item : expected) EXPECT_TRUE(torch::equal(got[item.key()], item.value())) << item.key();
}

}  // namespace
}  // namespace peft_test::cpu_memory_cache_test
