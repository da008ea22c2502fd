#pragma once

// Merging for methods whose every merged update is computed from the weight before the first merge, and whose
// unmerge restores that weight (HiRA, OSF, FRoD through KeptWeightLayer; PEANuT, which keeps more, directly).

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/adapter_layer.h"
#include "tuners/common/dict_adapter_layer.h"

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

/// A DictAdapterLayer that merges from the weight before its first merge and keeps that weight (on the CPU) until
/// the unmerge restores it, as Python's _base_weight_before_merge. The method's delta or merge_step reads
/// pending_original_ (set only while a merge is being prepared).
class KeptWeightLayer : public DictAdapterLayer {
 public:
  using DictAdapterLayer::DictAdapterLayer;

  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module& base, const std::vector<std::string>& names,
                                               bool safe_merge) override {
    at::Tensor original;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      original = original_;
    }
    const at::Tensor weight = base_layer().weight().detach();
    if (!original.defined() && !weight.device().is_meta()) original = weight.clone().cpu();
    return prepare_merge_from_original(std::move(original), pending_original_, mutex_, original_,
                                       [&] { return DictAdapterLayer::prepare_merge(base, names, safe_merge); });
  }

  /// Python's unmerge: the weight from before the first merge comes back, and every adapter is unmerged.
  void unmerge(torch::nn::Module&) override { unmerge_to_kept_weight(original_); }

 protected:
  at::Tensor pending_original_;  // the merge being prepared: the weight before the first merge
  at::Tensor original_;          // kept from the first merge until the unmerge (CPU); guarded by mutex_
};

}  // namespace peft::detail
