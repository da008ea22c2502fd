#pragma once

// DoRA (https://arxiv.org/abs/2402.09353): the adapted weight W' = m * (W + s*BA) / ||W + s*BA||, with a
// trainable magnitude m per output feature. The norm is treated as a constant in backward (section 4.3).

#include <torch/nn/module.h>

#include "core/layer_kinds.h"

namespace peft::detail::lora {

/// Holds the magnitude vector as its `weight` (Python PEFT's DoraLinearLayer), so the checkpoint key is
/// `<layer>.lora_magnitude_vector` after the ".weight" is dropped, as Python PEFT does.
class DoraMagnitudeImpl : public torch::nn::Module {
 public:
  explicit DoraMagnitudeImpl(at::Tensor magnitude);
  const at::Tensor& magnitude() const;
  void pretty_print(std::ostream& stream) const override;
};

/// The low-rank update BA laid out like the base weight of a linear (out, in) or conv layer; for an
/// embedding, (embedding_dim, num_embeddings).
at::Tensor dora_lora_weight(LayerKind kind, const at::Tensor& A, const at::Tensor& B, at::IntArrayRef base_weight_shape);

/// ||W + scaling * lora_weight|| per output feature: (out,) for linear and embedding, (1, out, 1, ...) for conv.
/// `weight` is the base weight as stored; `fan_in_fan_out` says it is stored (in, out).
at::Tensor dora_weight_norm(LayerKind kind, const at::Tensor& weight, const at::Tensor& lora_weight, double scaling,
                            bool fan_in_fan_out);

}  // namespace peft::detail::lora
