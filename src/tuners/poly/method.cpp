// Poly's registration: Python PEFT's PolyConfig fields, the layers it adapts, its checks.

#include <peft/error.h>

#include "tuners/poly/layer.h"

namespace peft::detail::poly {
namespace {

class Poly final : public MethodOf<PolyConfig> {
 public:
  Poly() : MethodOf("poly_") {
    layers({LayerKind::Linear});
    field(PEFT_FIELD(r)).check([](const std::string&, const int64_t& value) {
      // Python's update_layer check.
      if (value <= 0) {
        throw ConfigError("`r` should be a positive integer value but the value passed is " + std::to_string(value));
      }
    });
    field(PEFT_FIELD(init_weights));
    field(PEFT_FIELD(poly_type)).check([](const std::string&, const std::string& value) {
      // Python's get_router.
      if (value != "poly") {
        throw ConfigError("Unsupported poly_type: " + value +
                          ". Currently, only the following types are supported: `poly`.");
      }
    });
    // Python fails later (an empty router, or a reshape) where these are not positive.
    field(PEFT_FIELD(n_tasks)).check(positive());
    field(PEFT_FIELD(n_skills)).check(positive());
    field(PEFT_FIELD(n_splits)).check(positive());
    without_common_fields({"layers_to_transform", "layers_pattern"});
    rank_keys({{"poly_lora_A", 3}, {"poly_lora_B", 2}});
    rank_fields({"r", "", "", ""});
  }

  std::unique_ptr<AdapterBuilder> start(PolyConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::poly

PEFT_REGISTER_METHOD(poly, peft::detail::poly::Poly)
