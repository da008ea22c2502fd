// Lily's registration: Python PEFT's LilyConfig fields and the layers it adapts.

#include <peft/error.h>

#include "tuners/lily/layer.h"

namespace peft::detail::lily {
namespace {

class Lily final : public MethodOf<LilyConfig> {
 public:
  Lily() : MethodOf("lily_") {
    layers({LayerKind::Linear});  // Python's _create_new_module: torch.nn.Linear only
    field(PEFT_FIELD(r)).check(positive());
    field(PEFT_FIELD(stride_A)).check([](const std::string&, const int64_t& stride) {
      if (stride < 1) throw ConfigError("`stride_A` must be at least 1.");
    });
    field(PEFT_FIELD(num_B)).check([](const std::string&, const int64_t& experts) {
      if (experts < 2) throw ConfigError("`num_B` must be at least 2 for the router to be trained.");
    });
    field(PEFT_FIELD(scaling));
    field(PEFT_FIELD(init_weights));
    rank_keys({{"lily_A.weight", 0}, {"lily_router.weight", 1}});
    rank_fields({"r", "", "", ""});
  }

  std::unique_ptr<AdapterBuilder> start(LilyConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::lily

PEFT_REGISTER_METHOD(lily, peft::detail::lily::Lily)
