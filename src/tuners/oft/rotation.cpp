#include "tuners/oft/rotation.h"

#include <cmath>

#include <ATen/ops/block_diag.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linalg_solve.h>
#include <ATen/ops/triu_indices.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

namespace peft::detail::oft {
namespace {

at::Tensor skew_symmetric(const at::Tensor& vec, int64_t block_size) {
  const at::Tensor idx = at::triu_indices(block_size, block_size, 1, at::TensorOptions().dtype(at::kLong).device(vec.device()));
  at::Tensor m = at::zeros({vec.size(0), block_size, block_size}, vec.options());
  m.index_put_({at::indexing::Slice(), idx[0], idx[1]}, vec);
  return m - m.transpose(-2, -1);
}

at::Tensor upper_triangle(const at::Tensor& matrix, int64_t block_size) {
  const at::Tensor idx = at::triu_indices(block_size, block_size, 1, at::TensorOptions().dtype(at::kLong).device(matrix.device()));
  return matrix.index({at::indexing::Slice(), idx[0], idx[1]});
}

// COFT: keep each skew matrix within an eps-ball (eps scaled by 1/sqrt(rows)) around zero.
at::Tensor project(const at::Tensor& weight, const RotationSpec& spec) {
  const at::Tensor q = skew_symmetric(weight, spec.block_size);
  const double eps = spec.eps / std::sqrt(static_cast<double>(q.size(0)));
  const at::Tensor norm = q.norm(2, {1, 2}, true);
  const at::Tensor projected = at::where(norm <= eps, q, eps * (q / norm));
  return upper_triangle(projected, spec.block_size);
}

at::Tensor cayley(const at::Tensor& weight, const RotationSpec& spec) {
  const int64_t b = weight.size(0), n = spec.block_size;
  const at::Tensor q = skew_symmetric(weight, n);
  if (spec.use_cayley_neumann) {
    // Python PEFT's truncated series I + 2Q + 2Q^2 + ... + 2Q^(k-2) + Q^(k-1), term for term, so results
    // match it to rounding.
    at::Tensor r = at::eye(n, weight.options()).repeat({b, 1, 1});
    const int64_t terms = spec.neumann_terms;
    if (terms > 1) {
      r = r + 2.0 * q;
      if (terms > 2) {
        const at::Tensor q2 = at::bmm(q, q);
        r = r + 2.0 * q2;
        at::Tensor power = q2;
        for (int64_t i = 3; i < terms - 1; ++i) {
          power = at::bmm(power, q);
          r = r + 2.0 * power;
        }
        power = at::bmm(power, q);
        r = r + power;
      }
    }
    return r;
  }
  // R = (I - Q)(I + Q)^-1, i.e. R (I + Q) = I - Q: solve the transposed system.
  const at::Tensor eye = at::eye(n, weight.options()).expand({b, n, n});
  const at::Tensor solution = at::linalg_solve((eye + q).transpose(-2, -1), (eye - q).transpose(-2, -1));
  return solution.transpose(-2, -1);
}

}  // namespace

RotationModuleImpl::RotationModuleImpl(at::Tensor weight) { register_parameter("weight", std::move(weight)); }

void RotationModuleImpl::pretty_print(std::ostream& stream) const { stream << "OFTRotationModule()"; }

at::Tensor rotation_blocks(const at::Tensor& weight, const RotationSpec& spec) {
  if (spec.coft) {
    at::NoGradGuard no_grad;
    weight.copy_(project(weight, spec));
  }
  return cayley(weight, spec);
}

at::Tensor rotate(const at::Tensor& x, const at::Tensor& blocks, const RotationSpec& spec) {
  const int64_t positions = x.size(-1) / spec.block_size;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(positions);
  shape.push_back(spec.block_size);
  const at::Tensor r = spec.block_share ? blocks.repeat({positions, 1, 1}) : blocks;
  return at::einsum("...rk,rkc->...rc", {x.reshape(shape), r}).reshape(x.sizes());
}

at::Tensor block_diagonal(const at::Tensor& blocks, const RotationSpec& spec) {
  std::vector<at::Tensor> list;
  for (int64_t i = 0; i < spec.blocks; ++i) list.push_back(blocks[spec.block_share ? 0 : i]);
  return at::block_diag(list);
}

int64_t adjust_to_divisor(int64_t features, int64_t requested) {
  if (requested >= features) return features;
  int64_t higher = requested;
  while (higher <= features && features % higher != 0) ++higher;
  int64_t lower = requested;
  while (lower > 1 && features % lower != 0) --lower;
  return (requested - lower) <= (higher - requested) ? lower : higher;
}

}  // namespace peft::detail::oft
