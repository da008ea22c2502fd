#include "tuners/common/cast_input_layer.h"

#include <ATen/ops/dropout.h>

namespace peft::detail {

at::Tensor CastInputLayer::forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                                          BaseForward base_forward) {
  const c10::ScalarType previous = x.scalar_type();
  at::Tensor result = base_forward(x);
  const c10::ScalarType result_type = result.scalar_type();
  const bool training = base.is_training();
  at::Tensor input = x;
  for (const auto& r : active) {
    const auto& record = static_cast<const CastInputRecord&>(*r);
    // Python casts the input to the adapter's dtype and keeps it for the following adapters.
    input = input.to(compute_dtype(record.name, input.device()));
    const at::Tensor dropped = record.dropout > 0 ? at::dropout(input, record.dropout, training) : input;
    result = result + adapter_output(record, dropped, training);
  }
  if (restore_result_dtype_) result = result.to(result_type);
  return result.to(previous);
}

}  // namespace peft::detail
