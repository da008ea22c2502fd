#pragma once

// torch.svd_lowrank (M = None) for real matrices, drawing its random projection from a given generator: Python
// PEFT calls it inside torch.random.fork_rng() after torch.manual_seed(seed) (PSOFT, AdaMSS's slice_pca), which a
// CPU generator made with that seed reproduces draw for draw; elsewhere (AdaMSS's subspace Gram matrices) it
// draws from the global generator, which at::detail::getDefaultCPUGenerator() is.

#include <cstdint>
#include <tuple>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

namespace peft::detail {

/// torch._lowrank.get_approximate_basis(a, q, niter) (M = None): an orthonormal (m, q) basis of a's range.
at::Tensor approximate_basis(const at::Tensor& a, int64_t q, int64_t niter, at::Generator& generator);

/// torch.svd_lowrank(a, q, niter) (M = None): U (m, q), S (q), V (n, q) with a ~ U diag(S) V^T.
std::tuple<at::Tensor, at::Tensor, at::Tensor> svd_lowrank(const at::Tensor& a, int64_t q, int64_t niter,
                                                           at::Generator& generator);

}  // namespace peft::detail
