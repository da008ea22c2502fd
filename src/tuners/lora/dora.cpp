#include "tuners/lora/dora.h"

#include <ostream>

#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/matmul.h>

#include "core/module_access.h"

namespace peft::detail::lora {

DoraMagnitudeImpl::DoraMagnitudeImpl(at::Tensor magnitude) : torch::nn::Module("DoraMagnitude") {
  register_parameter("weight", std::move(magnitude));
}

const at::Tensor& DoraMagnitudeImpl::magnitude() const { return *parameters_of(*this).find("weight"); }

void DoraMagnitudeImpl::pretty_print(std::ostream& stream) const {
  stream << "peft::DoraMagnitude(size=" << magnitude().sizes() << ")";
}

at::Tensor dora_lora_weight(LayerKind kind, const at::Tensor& A, const at::Tensor& B, at::IntArrayRef base_weight_shape) {
  if (kind == LayerKind::Conv1d || kind == LayerKind::Conv2d || kind == LayerKind::Conv3d) {
    const int64_t r = A.size(0);
    return at::matmul(B.reshape({-1, r}), A.reshape({r, -1})).reshape(base_weight_shape);
  }
  return at::matmul(B, A);  // embedding: B (dim, r) @ A (r, num) -> (dim, num)
}

at::Tensor dora_weight_norm(LayerKind kind, const at::Tensor& weight, const at::Tensor& lora_weight, double scaling,
                            bool fan_in_fan_out) {
  if (kind == LayerKind::Conv1d || kind == LayerKind::Conv2d || kind == LayerKind::Conv3d) {
    std::vector<int64_t> dims;
    for (int64_t d = 1; d < weight.dim(); ++d) dims.push_back(d);
    return at::linalg_vector_norm(weight + scaling * lora_weight, 2, dims, /*keepdim=*/true).transpose(1, 0);
  }
  const bool transposed = kind == LayerKind::Embedding || fan_in_fan_out;
  const at::Tensor w = transposed ? weight.t() : weight;
  return at::linalg_vector_norm(w + scaling * lora_weight, 2, {1}, /*keepdim=*/false).to(w.scalar_type());
}

}  // namespace peft::detail::lora
