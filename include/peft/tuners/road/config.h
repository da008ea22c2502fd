#pragma once

#include <cstdint>
#include <string>

#include <torch/arg.h>

#include <peft/config.h>

namespace peft {

/// RoAd (https://arxiv.org/abs/2409.00119): the layer's output is split into groups of `group_size`; within a
/// group, element i and element i + group_size/2 form a 2D vector that is rotated by a learned angle and scaled
/// by a learned factor, y = R (W x + b). Targets Linear layers. Merging writes R W and R b; unmerging applies R's
/// inverse. Supports per-sample adapters (peft::AdapterNamesPerSample).
class PEFT_API RoadConfig : public MethodConfig<RoadConfig> {
 public:
  std::string peft_type() const override { return "ROAD"; }

  /// "road_1": one angle and scale per pair of elements (out_features / 2 of each per layer); "road_2": one per
  /// element (out_features); "road_4": separate angles and scales for the two columns of each element's
  /// rotation (2 * out_features).
  TORCH_ARG(std::string, variant) = "road_1";
  /// Even, and a divisor of every targeted layer's out_features.
  TORCH_ARG(int64_t, group_size) = 64;
  /// true: angles zero and scales one (a no-op); false: angles ~ N(0, 0.5^2), scales ~ N(1, 0.5^2).
  TORCH_ARG(bool, init_weights) = true;
};

}  // namespace peft
