#pragma once

// The layer of methods whose adapter is a dense (out, in) update computed from a few learned values
// (FourierFT's spectrum, WaveFT's wavelet coefficients): each active adapter adds x @ update^T to the
// layer's output, in the update's dtype, and merging adds the update (transposed for a weight stored
// (in, out)) to the weight.

#include <cstdint>
#include <utility>

#include <ATen/core/Tensor.h>

#include "tuners/common/dict_adapter_layer.h"

namespace peft::detail {

class DenseUpdateLayer : public DictAdapterLayer {
 public:
  using DictAdapterLayer::DictAdapterLayer;

 protected:
  /// The adapter's (out, in) update.
  virtual at::Tensor dense_update(const AdapterRecord& record) const = 0;

  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) final;
  at::Tensor delta_weight(const AdapterRecord& record) const final;
};

/// Python's draw of the learned values' positions in an (out, in) matrix:
/// torch.randperm(out * in, generator=torch.Generator().manual_seed(seed))[:n], as (rows, cols) (int64, CPU).
std::pair<at::Tensor, at::Tensor> seeded_positions(int64_t out, int64_t in, int64_t n, int64_t seed);

/// Python's check that `n_frequency` learned values fit an (out, in) layer.
void check_n_frequency_fits(int64_t n, int64_t in, int64_t out, const std::string& module_name);

}  // namespace peft::detail
