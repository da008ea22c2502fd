// PVeRA's registration: Python PEFT's PveraConfig fields, the layers it adapts, the projections shared by all
// layers of an adapter, and the checks Python makes across adapters and on load.

#include <set>

#include <c10/util/Exception.h>

#include <peft/error.h>

#include "tuners/pvera/layer.h"

namespace peft::detail::pvera {
namespace {

class Pvera final : public MethodOf<PveraConfig> {
 public:
  Pvera() : MethodOf("pvera_lambda_") {
    layers({LayerKind::Linear, LayerKind::LinearLike});
    field(PEFT_FIELD(r)).check(positive());
    field(PEFT_FIELD(projection_prng_key));
    field(PEFT_FIELD(save_projection));
    field(PEFT_FIELD(pvera_dropout)).check(probability());
    field(PEFT_FIELD(d_initial));
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(bias)).check(bias_choice("pvera_only"));
    field(PEFT_FIELD(init_weights));
    field(PEFT_FIELD(sample_at_inference));
    field(PEFT_FIELD(generator_seed));
    without_common_fields({"exclude_modules"});
    // Python's tuner holds pvera_A / pvera_B; with save_projection=false they are regenerated, not saved.
    auto saved = [](const PveraConfig& c) { return c.save_projection(); };
    shares("pvera_A", saved);
    shares("pvera_B", saved);
    // No per-layer tensor has the rank itself (pvera_lambda_d holds 2r): inspect reports the config's r only.
    rank_fields({"r", "", "", ""});
  }

  std::unique_ptr<AdapterBuilder> start(PveraConfig& config) const override { return make_builder(*this, config); }

  bool checks_other_adapters() const override { return true; }

  // Python's PveraModel._check_new_adapter_config.
  void check_new_adapter(const PeftConfig& base, const std::vector<std::shared_ptr<const PeftConfig>>& others) const override {
    const auto& config = static_cast<const PveraConfig&>(base);
    std::set<bool> save_projection{config.save_projection()};
    for (const auto& other : others) {
      if (other->peft_type() != peft_type()) continue;
      const auto& existing = static_cast<const PveraConfig&>(*other);
      if (existing.projection_prng_key() != config.projection_prng_key()) {
        throw ConfigError("PVeRA PRNG initialisation key must be the same for all adapters. Got config.projection_prng_key=" +
                          std::to_string(config.projection_prng_key()) + " but previous config had " +
                          std::to_string(existing.projection_prng_key()) + ".");
      }
      save_projection.insert(existing.save_projection());
    }
    // Python prints the set itself (VeRA sorts it into a list).
    if (save_projection.size() > 1) {
      throw ConfigError("PVeRA projection weights must be saved for all adapters or none, but got multiple different "
                        "values: {False, True}");
    }
  }

  // Python's PveraModel._remap_adapter_state_dict_for_load.
  std::optional<StateDict> checkpoint_for_load(const PeftConfig& base, const StateDict& state_dict) const override {
    const auto& config = static_cast<const PveraConfig&>(base);
    const bool present = state_dict.contains(shared_container("pvera_A")->checkpoint_key());
    if (config.save_projection() && !present) {
      throw StateDictError("Specified to load pvera_A and pvera_B from state dictionary however they were not present!");
    }
    if (!config.save_projection() && present) {
      TORCH_WARN("Specified to not load pvera_A and pvera_B from state dictionary however they are present in state "
                 "dictionary! Consider using them to ensure checkpoint loading is correct on all platforms using "
                 "`peft_config.save_projection = True`");
    } else if (!config.save_projection()) {
      TORCH_WARN("Specified to not load pvera_A and pvera_B from state dictionary. This means we will be relying on "
                 "PRNG initialisation to restore these projections using `config.projection_prng_key`, which may not "
                 "be accurate on all system configurations.");
    }
    return std::nullopt;
  }

 protected:
  void check(const PveraConfig& config) const override {
    if (!config.save_projection()) {
      TORCH_WARN("Specified to not save pvera_A and pvera_B within the state dictionary, instead they will be restored "
                 "using the PRNG key store in `config.projection_prng_key`. Consider setting `config.save_projection` "
                 "to `True` to guarantee restoring the checkpoint correctly on all system configurations.");
    }
  }
};

}  // namespace
}  // namespace peft::detail::pvera

PEFT_REGISTER_METHOD(pvera, peft::detail::pvera::Pvera)
