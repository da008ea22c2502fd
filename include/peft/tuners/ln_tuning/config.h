#pragma once

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// LN tuning (https://arxiv.org/abs/2312.11420): a trainable copy of each targeted module (typically the
/// LayerNorms) is used in place of the original while the adapter is active. Any module type can be targeted.
class PEFT_API LNTuningConfig : public MethodConfig<LNTuningConfig> {
 public:
  std::string peft_type() const override { return "LN_TUNING"; }
};

}  // namespace peft
