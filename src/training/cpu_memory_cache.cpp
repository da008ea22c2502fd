#include <peft/cpu_memory_cache.h>

#include <atomic>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

// Under AddressSanitizer a cached block is poisoned, so that a use after free is still reported (the macros do
// nothing in other builds).
#include <sanitizer/asan_interface.h>

namespace peft {
namespace {

// A block is what c10::alloc_cpu returned: `colour` bytes, then a header (the data's size and the block's address),
// then the tensor's data, at alloc_cpu's 64-byte alignment.
constexpr size_t kHeader = 64;
struct Header {
  size_t size;
  void* block;
};
// Blocks this large come from mmap (glibc's default threshold is 128 KiB) and get a colour.
constexpr size_t kColourFrom = size_t{64} << 10;
Header& header_of(void* data) { return *reinterpret_cast<Header*>(static_cast<char*>(data) - kHeader); }

// Process-wide and never destroyed: a tensor allocated here may be freed at any time, even during exit.
struct Cache {
  std::mutex mutex;
  bool active = false;
  size_t max_bytes = 0;
  size_t cached_bytes = 0;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // by data size
  c10::Allocator* previous = nullptr;

  // Needs the mutex held; returns the blocks to free outside it.
  std::vector<void*> take_all() {
    std::vector<void*> blocks;
    for (auto& [size, list] : free_blocks) blocks.insert(blocks.end(), list.begin(), list.end());
    free_blocks.clear();
    cached_bytes = 0;
    return blocks;
  }
};

Cache& cache() {
  static auto* instance = new Cache;
  return *instance;
}

// Gives the blocks behind cached data pointers back to the system.
void free_cached(const std::vector<void*>& cached) {
  for (void* data : cached) {
    ASAN_UNPOISON_MEMORY_REGION(data, header_of(data).size);
    c10::free_cpu(header_of(data).block);
  }
}

void release(void* data) {
  if (data == nullptr) return;
  c10::profiledCPUMemoryReporter().Delete(data);
  const Header header = header_of(data);
  const size_t size = header.size;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.active && c.cached_bytes + size <= c.max_bytes) {
      ASAN_POISON_MEMORY_REGION(data, size);
      c.free_blocks[size].push_back(data);
      c.cached_bytes += size;
      return;
    }
  }
  c10::free_cpu(header.block);
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) const override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (nbytes == 0) return {nullptr, nullptr, &release, cpu};
    const size_t size = (nbytes + kHeader - 1) / kHeader * kHeader;
    void* data = take(size);
    if (data == nullptr) {
      const size_t colour = size >= kColourFrom ? next_colour() : 0;
      void* block = c10::alloc_cpu(colour + kHeader + size);
      data = static_cast<char*>(block) + colour + kHeader;
      header_of(data) = {size, block};
    }
    ASAN_UNPOISON_MEMORY_REGION(data, size);
    c10::profiledCPUMemoryReporter().New(data, nbytes);
    return {data, data, &release, cpu};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

 private:
  static void* take(size_t size) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    auto found = c.free_blocks.find(size);
    if (found == c.free_blocks.end() || found->second.empty()) return nullptr;
    void* data = found->second.back();
    found->second.pop_back();
    c.cached_bytes -= size;
    return data;
  }
  // glibc maps each large block on pages of its own, so the data of all of them would start at the same offset in a
  // page and compete for the same cache sets (a Llama-shaped LoRA step ran 6 % slower so); successive large blocks
  // start 64 bytes x 0..63 further in.
  static size_t next_colour() {
    static std::atomic<size_t> count{0};
    return (count.fetch_add(1, std::memory_order_relaxed) % 64) * 64;
  }
};

c10::Allocator* caching_allocator() {
  static auto* instance = new CachingCpuAllocator;
  return instance;
}

}  // namespace

CpuMemoryCache::CpuMemoryCache(size_t max_cached_bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  TORCH_CHECK(!c.active,
              "peft::CpuMemoryCache: another CpuMemoryCache is alive in this process; it caches for every thread "
              "already, so keep one (at the outermost scope of the training loop).");
  c10::Allocator* previous = c10::GetCPUAllocator();
  c10::SetCPUAllocator(caching_allocator());
  TORCH_CHECK(c10::GetCPUAllocator() == caching_allocator(),
              "peft::CpuMemoryCache: LibTorch kept the CPU allocator registered with a higher priority (by "
              "c10::SetCPUAllocator); nothing was changed. Leave out the CpuMemoryCache, or that allocator.");
  c.previous = previous;
  c.max_bytes = max_cached_bytes;
  c.active = true;
}

CpuMemoryCache::~CpuMemoryCache() {
  Cache& c = cache();
  std::vector<void*> blocks;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    // Another allocator set inside the scope stays; ours only steps aside.
    if (c10::GetCPUAllocator() == caching_allocator()) c10::SetCPUAllocator(c.previous);
    c.active = false;
    blocks = c.take_all();
  }
  free_cached(blocks);
}

size_t CpuMemoryCache::cached_bytes() const {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.cached_bytes;
}

void CpuMemoryCache::empty_cache() {
  Cache& c = cache();
  std::vector<void*> blocks;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    blocks = c.take_all();
  }
  free_cached(blocks);
}

}  // namespace peft
