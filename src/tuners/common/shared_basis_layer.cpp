#include "tuners/common/shared_basis_layer.h"

#include <algorithm>

#include <ATen/ops/dropout.h>

#include "tuners/common/pending_adapter.h"

namespace peft::detail {

SharedBasisLayer::SharedBasisLayer(const LayerRequest& request, const Method& method, const std::string& prefix,
                                   const std::string& first, const std::string& second, bool restore_result_dtype)
    : DictAdapterLayer(request, method,
                       {{first},
                        {second},
                        // Frozen, shared with the adapter's other layers (Method::shares).
                        {prefix + "_A", false, true, /*holds_buffers=*/true},
                        {prefix + "_B", false, true, /*holds_buffers=*/true}}),
      restore_result_dtype_(restore_result_dtype) {}

at::Tensor SharedBasisLayer::forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                                            BaseForward base_forward) {
  const c10::ScalarType previous = x.scalar_type();
  at::Tensor result = base_forward(x);
  const c10::ScalarType result_type = result.scalar_type();
  at::Tensor input = x;
  for (const auto& r : active) {
    const auto& record = static_cast<const SharedBasisRecord&>(*r);
    // Python casts the input to the adapter's dtype and keeps it for the following adapters.
    input = input.to(compute_dtype(record.name, input.device()));
    const at::Tensor dropped = record.dropout > 0 ? at::dropout(input, record.dropout, base.is_training()) : input;
    result = result + adapter_output(record, dropped);
  }
  if (restore_result_dtype_) result = result.to(result_type);
  return result.to(previous);
}

SharedBasisPlan plan_shared_bases(const std::vector<LayerRequest>& requests, bool save_projection) {
  SharedBasisPlan plan;
  for (const LayerRequest& request : requests) {
    plan.in_features = std::max(plan.in_features, request.base.in_features);
    plan.out_features = std::max(plan.out_features, request.base.out_features);
  }
  // Loaded from the checkpoint when it holds them; otherwise they must have their values now.
  const bool loaded = requests.front().low_cpu_mem_usage && save_projection;
  plan.options = adapter_options(requests.front().base, loaded);
  plan.materialise = materialised(plan.options);
  return plan;
}

}  // namespace peft::detail
