#pragma once

// Reusing freed CPU tensor memory across training steps.
//
//   peft::CpuMemoryCache cache;  // until the end of the scope, for the whole process
//   for (...) { optimizer.zero_grad(); loss().backward(); optimizer.step(); }
//
// Every training step allocates the same activations and gradients again. glibc gives large blocks back to the
// kernel when they are freed (mmap threshold, heap trimming), so each step takes page faults to get them back:
// about a tenth of a Llama-shaped LoRA step on a 2-core machine. Within a CpuMemoryCache's lifetime LibTorch's CPU
// tensors come from an allocator that keeps freed blocks and hands them out again for the next allocation of the
// same size. Results are bit-identical; only where the memory comes from changes.
//
// It replaces LibTorch's CPU allocator (c10::SetCPUAllocator) for the whole process, so create it before, and
// destroy it after, any other thread that allocates CPU tensors (data loaders, a process group's threads) starts or
// stops allocating. One at a time: a second while one is alive throws. Tensors allocated inside the scope may
// outlive it; their memory is freed normally then.

#include <cstddef>

#include <peft/export.h>

namespace peft {

class PEFT_API CpuMemoryCache {
 public:
  /// Keeps at most `max_cached_bytes` of freed blocks (a block freed beyond that goes back to the system). A
  /// training loop with fixed shapes needs about its step's peak; varying shapes (sequence lengths) make more sizes,
  /// which the bound keeps in check.
  explicit CpuMemoryCache(size_t max_cached_bytes = size_t{2} << 30);
  /// Frees every cached block and puts back the allocator that was in place before.
  ~CpuMemoryCache();
  CpuMemoryCache(const CpuMemoryCache&) = delete;
  CpuMemoryCache& operator=(const CpuMemoryCache&) = delete;

  /// Bytes of freed blocks held for reuse now.
  size_t cached_bytes() const;
  /// Frees every cached block now (before an evaluation with other shapes, say); caching goes on.
  void empty_cache();
};

}  // namespace peft
