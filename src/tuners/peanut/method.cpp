// PEANuT's registration: Python PEFT's PeanutConfig fields, the layers it adapts and its config checks.

#include <peft/error.h>

#include "tuners/peanut/activation.h"
#include "tuners/peanut/layer.h"

namespace peft::detail::peanut {
namespace {

class Peanut final : public MethodOf<PeanutConfig> {
 public:
  Peanut() : MethodOf("peanut_") {
    layers({LayerKind::Linear});
    field(PEFT_FIELD(r));
    field(PEFT_FIELD(depth));
    field(PEFT_FIELD(act_fn));
    field(PEFT_FIELD(scaling));
    field(PEFT_FIELD(init_weights));
    rank_keys({{"peanut_A.weight", 0}});
    rank_fields({"r", "", "", ""});
  }

  std::unique_ptr<AdapterBuilder> start(PeanutConfig& config) const override { return make_builder(*this, config); }

 protected:
  // Python's PeanutConfig.__post_init__.
  void check(const PeanutConfig& config) const override {
    if (config.r() <= 0) throw ConfigError("`r` must be a positive integer.");
    if (config.depth() < 0) throw ConfigError("`depth` can only be a non-negative integer.");
    const auto& keys = act2fn_keys();
    if (std::find(keys.begin(), keys.end(), config.act_fn()) == keys.end()) {
      std::string list;
      for (size_t i = 0; i < keys.size(); ++i) list += (i ? ", '" : "'") + keys[i] + "'";
      throw ConfigError("Unsupported `act_fn`: " + config.act_fn() + ". Must be one of [" + list + "].");
    }
    if (!activation(config.act_fn())) {
      throw ConfigError("`act_fn` '" + config.act_fn() + "' is one of transformers' activations, but peft-cpp does not "
                        "implement it; use another one (e.g. 'relu', 'gelu', 'silu', 'tanh').");
    }
  }
};

}  // namespace
}  // namespace peft::detail::peanut

PEFT_REGISTER_METHOD(peanut, peft::detail::peanut::Peanut)
