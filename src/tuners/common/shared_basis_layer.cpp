#include "tuners/common/shared_basis_layer.h"

#include <algorithm>

#include "tuners/common/pending_adapter.h"

namespace peft::detail {

SharedBasisLayer::SharedBasisLayer(const LayerRequest& request, const Method& method, const std::string& prefix,
                                   const std::string& first, const std::string& second, bool restore_result_dtype)
    : CastInputLayer(request, method,
                     {{first},
                      {second},
                      // Frozen, shared with the adapter's other layers (Method::shares).
                      {prefix + "_A", false, true, /*holds_buffers=*/true},
                      {prefix + "_B", false, true, /*holds_buffers=*/true}},
                     restore_result_dtype) {}

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
