#pragma once

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// BEFT (https://arxiv.org/abs/2509.15974): only a learned bias offset is trained; each targeted Linear's
/// output gets a (1, out_features) vector `beft_bias` added. Merging adds it to the layer's bias (refused for
/// a layer without one). Targets Linear layers.
class PEFT_API BeftConfig : public MethodConfig<BeftConfig> {
 public:
  std::string peft_type() const override { return "BEFT"; }

  /// true: the offsets start at zero (a no-op); false: standard normal.
  TORCH_ARG(bool, init_weights) = true;
};

}  // namespace peft
