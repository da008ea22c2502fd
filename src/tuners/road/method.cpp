// RoAd's registration: Python PEFT's RoadConfig fields and the layers it adapts.

#include <peft/error.h>

#include "tuners/road/layer.h"

namespace peft::detail::road {
namespace {

class Road final : public MethodOf<RoadConfig> {
 public:
  Road() : MethodOf("road_") {
    layers({LayerKind::Linear});  // Python: torch.nn.Linear only
    field(PEFT_FIELD(variant)).check([](const std::string&, const std::string& variant) {
      if (variant != "road_1" && variant != "road_2" && variant != "road_4") {
        throw ConfigError("Invalid variant " + variant + " specified. Please choose from road_1, road_2 or road_4");
      }
    });
    field(PEFT_FIELD(group_size)).check([](const std::string&, const int64_t& group_size) {
      if (group_size <= 0 || group_size % 2 != 0) {
        throw ConfigError("The group_size must be divisible by 2 when using RoadLayer, but got " +
                          std::to_string(group_size) + ".");
      }
    });
    field(PEFT_FIELD(init_weights));
    without_common_fields({"exclude_modules", "layers_to_transform", "layers_pattern"});
  }

  std::unique_ptr<AdapterBuilder> start(RoadConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::road

PEFT_REGISTER_METHOD(road, peft::detail::road::Road)
