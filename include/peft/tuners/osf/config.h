#pragma once

#include <cstdint>
#include <optional>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// An OSF rank as Python's config holds it: an int (a number of singular directions), or a float, which in
/// (0, 1] is that fraction of the weight's smaller dimension and otherwise is truncated to an int. Either is
/// clamped to [0, min(out, in)] per layer.
class PEFT_API OsfRank {
 public:
  OsfRank(int value) : int_(value) {}                 // NOLINT: implicit by design
  OsfRank(long value) : int_(value) {}                // NOLINT
  OsfRank(long long value) : int_(value) {}           // NOLINT
  OsfRank(double value) : is_float_(true), float_(value) {}  // NOLINT

  bool is_float() const noexcept { return is_float_; }
  int64_t int_value() const noexcept { return int_; }
  double float_value() const noexcept { return float_; }

  bool operator==(const OsfRank& other) const {
    return is_float_ == other.is_float_ && int_ == other.int_ && float_ == other.float_;
  }

 private:
  bool is_float_ = false;
  int64_t int_ = 0;
  double float_ = 0.0;
};

/// OSF, Orthogonal Subspace Fine-tuning (Python PEFT's tuners/osf): each targeted Linear's weight is split by
/// its SVD into the top `effective_rank` singular directions, kept frozen (buffers, not saved), and the rest,
/// U_low / S_low / V_low, which are trained (gradients of U_low and V_low are projected orthogonally to the
/// frozen directions) and saved. The layer computes with the weight rebuilt from both parts, with the first
/// active adapter only. Merging writes that weight; unlike Python, which cannot unmerge OSF, the layer keeps
/// the weight from before the first merge and unmerging restores it. Targets Linear layers; without
/// target_modules, every Linear layer ("all-linear", as Python does for models without a known type).
class PEFT_API OsfConfig : public MethodConfig<OsfConfig> {
 public:
  std::string peft_type() const override { return "OSF"; }

  /// The preserved (frozen) rank; unset: half the smaller weight dimension. The trainable rank is
  /// min(out, in) minus this.
  TORCH_ARG(std::optional<OsfRank>, effective_rank);
  /// Per-module effective ranks: the first key that Python's re.search finds in the module's full name wins.
  TORCH_ARG(std::optional<PatternMap<OsfRank>>, rank_pattern);
  /// Accepted and written back; Python's OSF ignores it.
  TORCH_ARG(std::optional<bool>, init_weights);
  /// Accepted and written back; Python's OSF ignores it ("for forward compatibility").
  TORCH_ARG(std::optional<PatternMap<int64_t>>, target_svd_config);
};

}  // namespace peft
