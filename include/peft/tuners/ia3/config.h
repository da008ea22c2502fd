#pragma once

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// (IA)^3 (https://arxiv.org/abs/2205.05638): a learned vector rescales a layer's outputs, or, for the
/// `feedforward_modules`, its inputs. Targets Linear, Conv2d, Conv3d and peft::LinearLike layers.
class PEFT_API IA3Config : public MethodConfig<IA3Config> {
 public:
  std::string peft_type() const override { return "IA3"; }

  /// The targeted modules whose input (not output) is scaled; a subset of target_modules. Names match as a
  /// plain suffix of the module name, a regex as a full match (Python PEFT's rules).
  TORCH_ARG(TargetModules, feedforward_modules);
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// true: the vectors start at one (a no-op); false: random.
  TORCH_ARG(bool, init_ia3_weights) = true;
};

}  // namespace peft
