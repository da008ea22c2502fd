#include "tuners/waveft/wavelets.h"

#include <cmath>

#include <ATen/TensorOperators.h>
#include <ATen/ops/conv_transpose2d.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>

namespace peft::detail::waveft {
namespace {

/// a[i] * b[j], computed in the filters' dtype as Python's _outer does.
at::Tensor outer_product(const at::Tensor& a, const at::Tensor& b) { return a.unsqueeze(-1) * b.unsqueeze(0); }

bool is_half_precision(c10::ScalarType type) { return type == at::kHalf || type == at::kBFloat16; }

}  // namespace

const std::vector<std::pair<std::string, int64_t>>& wavelet_reductions() {
  // Filter lengths: 2N for dbN and symN, 6N for coifN.
  static const std::vector<std::pair<std::string, int64_t>> reductions = [] {
    std::vector<std::pair<std::string, int64_t>> out;
    for (int64_t n = 1; n <= 38; ++n) out.emplace_back("db" + std::to_string(n), 2 * n - 2);
    for (int64_t n = 2; n <= 20; ++n) out.emplace_back("sym" + std::to_string(n), 2 * n - 2);
    for (int64_t n = 1; n <= 17; ++n) out.emplace_back("coif" + std::to_string(n), 6 * n - 2);
    return out;
  }();
  return reductions;
}

std::string python_list(const std::vector<std::string>& names) {
  std::string out = "[";
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", '" : "'") + names[i] + "'";
  return out + "]";
}

std::optional<ReconstructionFilters> reconstruction_filters(const std::string& family) {
  for (const WaveletCoefficients& wavelet : wavelet_coefficients()) {
    if (wavelet.name != family) continue;
    // Python's Wavelet: coiflets are tabled with sum 1 and scaled by sqrt(2); rec_hi is the reversed
    // lowpass with alternating signs.
    const double scale = family.rfind("coif", 0) == 0 ? std::sqrt(2.0) : 1.0;
    ReconstructionFilters filters;
    const size_t length = wavelet.rec_lo.size();
    for (size_t i = 0; i < length; ++i) filters.lo.push_back(wavelet.rec_lo[i] * scale);
    for (size_t i = 0; i < length; ++i) {
      const double mirrored = filters.lo[length - 1 - i];
      filters.hi.push_back(i % 2 == 0 ? mirrored : -mirrored);
    }
    return filters;
  }
  return std::nullopt;
}

at::Tensor inverse_dwt2d(const at::Tensor& approx, const at::Tensor& horizontal, const at::Tensor& vertical,
                         const at::Tensor& diagonal, const ReconstructionFilters& filters) {
  const at::TensorOptions options = approx.options();
  const at::Tensor lo = at::tensor(filters.lo, at::TensorOptions().dtype(at::kDouble)).to(options);
  const at::Tensor hi = at::tensor(filters.hi, at::TensorOptions().dtype(at::kDouble)).to(options);
  // Python's _construct_2d_filt: (4, 1, L, L) kernels for the (ll, lh, hl, hh) sub-bands.
  at::Tensor kernels =
      at::stack({outer_product(lo, lo), outer_product(hi, lo), outer_product(lo, hi), outer_product(hi, hi)}, 0)
          .unsqueeze(1);
  at::Tensor bands = at::stack({approx, horizontal, vertical, diagonal}, 0).unsqueeze(0);
  // LibTorch 1.13 has no CPU transposed convolution for float16/bfloat16: those go through float32 (the
  // kernels keep the values Python rounds them to) and come back rounded, as a GPU convolution would.
  const bool widen = is_half_precision(options.dtype().toScalarType());
  if (widen) {
    kernels = kernels.to(at::kFloat);
    bands = bands.to(at::kFloat);
  }
  at::Tensor image = at::conv_transpose2d(bands, kernels, /*bias=*/{}, /*stride=*/{2, 2}).squeeze(1).squeeze(0);
  if (widen) image = image.to(options.dtype().toScalarType());
  // The filter's overhang on each side.
  const int64_t pad = (2 * static_cast<int64_t>(filters.lo.size()) - 3) / 2;
  if (pad > 0) image = image.narrow(0, pad, image.size(0) - 2 * pad).narrow(1, pad, image.size(1) - 2 * pad);
  return image;
}

}  // namespace peft::detail::waveft
