#include "tuners/common/layer_checks.h"

#include <c10/util/Exception.h>

#include <peft/error.h>

#include "tuners/common/conv_functional.h"

namespace peft::detail {

void align_fan_in_fan_out(const BaseLayer& base, bool& fan_in_fan_out) {
  if (base.kind == LayerKind::Linear && fan_in_fan_out) {
    TORCH_WARN("fan_in_fan_out is set to True but the target module is `torch::nn::Linear`. Setting fan_in_fan_out to False.");
    fan_in_fan_out = false;
  } else if (base.kind == LayerKind::LinearLike && base.fan_in_fan_out != fan_in_fan_out) {
    if (base.fan_in_fan_out) {
      TORCH_WARN("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
    } else {
      TORCH_WARN("fan_in_fan_out is set to True but the target module stores its weight as (out, in). Setting "
                 "fan_in_fan_out to False.");
    }
    fan_in_fan_out = base.fan_in_fan_out;
  }
}

int64_t ungrouped_conv_fan_in(const LayerRequest& request, const Method& method) {
  const ConvGeometry g = conv_geometry(*request.base.module, request.base.kind);
  if (g.groups != 1) {
    throw UnsupportedLayerError(method.peft_type() + " cannot adapt the grouped convolution '" + request.module_name +
                                "' (groups=" + std::to_string(g.groups) + "); Python PEFT's " + method.peft_type() +
                                " layers assume groups=1.");
  }
  int64_t fan_in = g.in_channels;
  for (int64_t k : g.kernel) fan_in *= k;
  return fan_in;
}

}  // namespace peft::detail
