#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// AdaMSS, adaptive multi-subspaces (Python PEFT's tuners/adamss): the top-r right singular vectors of the
/// layer's [W | b] (torch.svd_lowrank seeded with random_seed) give a frozen projection newB (r, in [+ 1]); the
/// output rows are clustered (k-means on the left singular vectors) into num_subspaces groups, and each group
/// i has a trained A_i (rank_i, r) and B_i (rows_i, rank_i):
/// y = W x + b + scatter_i(B_i A_i newB [x; 1]). Merging adds that update to the weight and the bias. Targets
/// Linear layers. Adaptive Subspace Allocation (use_asa) runs during training through peft::AdamssAsa.
class PEFT_API AdamssConfig : public MethodConfig<AdamssConfig> {
 public:
  std::string peft_type() const override { return "ADAMSS"; }

  /// Rank of the SVD (clamped to the layer's smaller dimension).
  TORCH_ARG(int64_t, r) = 100;
  /// Number of subspaces (clusters of output rows; clamped to the number of rows).
  TORCH_ARG(int64_t, num_subspaces) = 5;
  /// Rank of each subspace's A_i / B_i (at most the subspace's row count).
  TORCH_ARG(int64_t, subspace_rank) = 1;
  /// "orthogonal": B_i start at zero (a no-op adapter); std::nullopt (Python's None): B_i random (0.01 randn).
  TORCH_ARG(std::optional<std::string>, init_weights) = std::string("orthogonal");
  /// Adaptive Subspace Allocation: peft::AdamssAsa prunes subspaces during training.
  TORCH_ARG(bool, use_asa) = false;
  /// ASA: active subspaces (over all layers) at the end of the schedule.
  TORCH_ARG(int64_t, asa_target_subspaces) = 50;
  /// ASA: the first and last step of importance accumulation and pruning.
  TORCH_ARG(int64_t, init_warmup) = 50;
  TORCH_ARG(int64_t, final_warmup) = 1000;
  /// ASA: steps between two maskings.
  TORCH_ARG(int64_t, mask_interval) = 100;
  /// ASA: EMA coefficients of the importance and its uncertainty.
  TORCH_ARG(double, asa_importance_beta) = 0.85;
  TORCH_ARG(double, asa_uncertainty_beta) = 0.85;
  /// ASA: exponent of the schedule from all subspaces down to asa_target_subspaces.
  TORCH_ARG(double, asa_schedule_exponent) = 3.0;
  /// Subspace ranks from the singular values of each subspace (those above svd_threshold times the largest,
  /// at most subspace_rank) instead of subspace_rank.
  TORCH_ARG(bool, use_dynamic_rank) = false;
  TORCH_ARG(double, svd_threshold) = 0.1;
  /// Seed of the SVD's random projection (the subspaces, hence the checkpoint shapes, depend on it).
  TORCH_ARG(int64_t, random_seed) = 0;
};

}  // namespace peft
