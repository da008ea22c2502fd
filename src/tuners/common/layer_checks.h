#pragma once

// Per-layer checks several methods share.

#include "core/method.h"

namespace peft::detail {

/// Python PEFT's fan_in_fan_out correction: a torch::nn::Linear stores (out, in), so the flag becomes false;
/// a peft::LinearLike layer says how it stores its weight, and the flag follows it. Warns when it changes.
void align_fan_in_fan_out(const BaseLayer& base, bool& fan_in_fan_out);

/// The flattened kernel size in_channels * kh * kw of a Conv2d, refusing grouped convolutions, which the
/// methods that rotate or reflect the flattened kernel cannot handle (Python PEFT assumes groups=1 there).
int64_t ungrouped_conv_fan_in(const LayerRequest& request, const Method& method);

}  // namespace peft::detail
