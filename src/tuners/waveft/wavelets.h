#pragma once

// The wavelet side of WaveFT: which families Python PEFT's WaveFTConfig accepts, the filters of those its
// wavelet table has, and the single-level inverse 2-D discrete wavelet transform its get_delta_weight uses
// (tuners/waveft/waverec2d.py, itself from PyTorch-Wavelet-Toolbox).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::detail::waveft {

/// A wavelet's lowpass reconstruction coefficients as Python's table lists them.
struct WaveletCoefficients {
  std::string name;
  std::vector<double> rec_lo;
};
/// Python's table (db1-db10, sym2-sym10, coif1-coif5), in its order.
const std::vector<WaveletCoefficients>& wavelet_coefficients();

/// Python's WAVELET_REDUCTIONS: every family the config accepts (db1-db38, sym2-sym20, coif1-coif17, in
/// that order) with the rows and columns (equal) one reconstruction loses: filter length - 2.
const std::vector<std::pair<std::string, int64_t>>& wavelet_reductions();
/// Python's list of the accepted families as its error messages print it: ['db1', 'db2', ...].
std::string python_list(const std::vector<std::string>& names);

/// The reconstruction filter pair of a family, as Python's Wavelet class derives it; nullopt for a family
/// the config accepts but the table lacks (db11 and up, sym11 and up, coif6 and up).
struct ReconstructionFilters {
  std::vector<double> lo, hi;
};
std::optional<ReconstructionFilters> reconstruction_filters(const std::string& family);

/// waverec2d((cA, (cH, cV, cD)), wavelet): the (2h + L - 2 - 2 * ((2L - 3) / 2))-row image the four
/// (h, w) sub-bands reconstruct to, in their dtype (half precision is convolved in float32 and rounded back).
at::Tensor inverse_dwt2d(const at::Tensor& approx, const at::Tensor& horizontal, const at::Tensor& vertical,
                         const at::Tensor& diagonal, const ReconstructionFilters& filters);

}  // namespace peft::detail::waveft
