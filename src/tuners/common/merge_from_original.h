#pragma once

// Merging for methods whose every merged update is computed from the weight before the first merge, and whose
// unmerge restores that weight (HiRA, PEANuT).

#include <functional>
#include <memory>
#include <mutex>

#include <ATen/core/Tensor.h>

#include "core/adapter_layer.h"

namespace peft::detail {

/// Runs `prepare` (the layer's DictAdapterLayer::prepare_merge) with `pending` set to `original` meanwhile, so
/// that the method's delta can read it; the returned change, once committed, stores `original` in `kept` (under
/// `mutex`) for the unmerge. Nothing is kept when `prepare` fails or has nothing to merge.
inline std::unique_ptr<PendingChange> prepare_merge_from_original(
    at::Tensor original, at::Tensor& pending, std::mutex& mutex, at::Tensor& kept,
    const std::function<std::unique_ptr<PendingChange>()>& prepare) {
  class KeepOriginal final : public PendingChange {
   public:
    KeepOriginal(std::unique_ptr<PendingChange> merge, std::mutex& mutex, at::Tensor& kept, at::Tensor original)
        : merge_(std::move(merge)), mutex_(mutex), kept_(kept), original_(std::move(original)) {}
    void commit() override {
      merge_->commit();
      std::lock_guard<std::mutex> lock(mutex_);
      kept_ = original_;
    }

   private:
    std::unique_ptr<PendingChange> merge_;
    std::mutex& mutex_;
    at::Tensor& kept_;
    at::Tensor original_;
  };
  pending = original;
  std::unique_ptr<PendingChange> merge;
  try {
    merge = prepare();
  } catch (...) {
    pending = at::Tensor();
    throw;
  }
  pending = at::Tensor();
  if (!merge) return nullptr;
  return std::make_unique<KeepOriginal>(std::move(merge), mutex, kept, std::move(original));
}

}  // namespace peft::detail
