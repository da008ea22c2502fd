#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// PSOFT, orthogonal fine-tuning in the principal subspace (Python PEFT's tuners/psoft,
/// https://openreview.net/forum?id=FSHrinMArK): from the SVD of each targeted Linear's weight, frozen factors
/// A (r, in) and B (out, r) (buffers, not saved) span its top-r subspace, and a trained r x r matrix R
/// (Cayley-parameterised orthogonal, optionally scaled by vectors) acts between them:
/// y = W x + b + (psoft_alpha / r) B (R - I) A x. Merging adds that update. Targets Linear layers.
class PEFT_API PsoftConfig : public MethodConfig<PsoftConfig> {
 public:
  std::string peft_type() const override { return "PSOFT"; }

  /// The size of R (and the rank of A and B).
  TORCH_ARG(int64_t, r) = 32;
  /// The update is scaled by psoft_alpha / r.
  TORCH_ARG(double, psoft_alpha) = 32;
  /// Dropout probability on the adapter's input.
  TORCH_ARG(double, psoft_dropout) = 0.0;
  /// Linear layers store (out, in): as in Python, true is reset to false with a warning.
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// "psoft_init": A = V_r^T (row-orthogonal), B = U_r S_r / scaling; "pissa_init": sqrt(S_r / scaling) on both.
  TORCH_ARG(std::string, ab_svd_init) = "psoft_init";
  /// "full": torch.linalg.svd; "lowrank": torch.svd_lowrank (randomised, seeded with random_seed).
  TORCH_ARG(std::string, psoft_svd) = "full";
  /// Power iterations of the low-rank SVD.
  TORCH_ARG(int64_t, psoft_svd_lowrank_niter) = 10;
  /// Seed of the low-rank SVD's random projection.
  TORCH_ARG(int64_t, random_seed) = 0;
  /// true: R = (I + Q)(I - Q)^-1 from a skew-symmetric Q (r (r - 1) / 2 trained values); false: R free (r x r).
  TORCH_ARG(bool, psoft_orth) = true;
  /// A trained scaling vector on R's output side (rows).
  TORCH_ARG(bool, psoft_mag_b) = true;
  /// A trained scaling vector on R's input side (columns).
  TORCH_ARG(bool, psoft_mag_a) = true;
  /// Approximates the Cayley inverse by a Neumann series of num_cayley_neumann_terms terms.
  TORCH_ARG(bool, use_cayley_neumann) = false;
  TORCH_ARG(int64_t, num_cayley_neumann_terms) = 5;
  /// With use_cayley_neumann: Q is rescaled to this Frobenius norm when it is larger (in (0, 1)).
  TORCH_ARG(std::optional<double>, cayley_neumann_eps);
  /// true: R starts as the identity (a no-op); false: a random R near it.
  TORCH_ARG(bool, init_weights) = true;
};

}  // namespace peft
