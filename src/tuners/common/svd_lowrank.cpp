#include "tuners/common/svd_lowrank.h"

#include <ATen/ops/linalg_qr.h>
#include <ATen/ops/linalg_svd.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/randn.h>

namespace peft::detail {

at::Tensor approximate_basis(const at::Tensor& a, int64_t q, int64_t niter, at::Generator& generator) {
  const int64_t n = a.size(-1);
  const at::Tensor projection = at::randn({n, q}, generator, at::TensorOptions().dtype(a.scalar_type())).to(a.device());
  const at::Tensor a_h = a.transpose(-2, -1);
  at::Tensor basis = std::get<0>(at::linalg_qr(at::matmul(a, projection)));
  for (int64_t i = 0; i < niter; ++i) {
    basis = std::get<0>(at::linalg_qr(at::matmul(a_h, basis)));
    basis = std::get<0>(at::linalg_qr(at::matmul(a, basis)));
  }
  return basis;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> svd_lowrank(const at::Tensor& a, int64_t q, int64_t niter,
                                                           at::Generator& generator) {
  const int64_t m = a.size(-2), n = a.size(-1);
  const at::Tensor a_t = a.transpose(-2, -1);
  if (m < n || n > q) {
    const at::Tensor basis = approximate_basis(a_t, q, niter, generator);
    const at::Tensor b_t = at::matmul(a, basis);
    const auto [u, s, vh] = at::linalg_svd(b_t, /*full_matrices=*/false);
    return {u, s, basis.matmul(vh.transpose(-2, -1))};
  }
  const at::Tensor basis = approximate_basis(a, q, niter, generator);
  const at::Tensor b_t = at::matmul(a_t, basis).transpose(-2, -1);
  const auto [u, s, vh] = at::linalg_svd(b_t, /*full_matrices=*/false);
  return {basis.matmul(u), s, vh.transpose(-2, -1)};
}

}  // namespace peft::detail
