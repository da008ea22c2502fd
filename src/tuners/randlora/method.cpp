// RandLoRA's registration: Python PEFT's RandLoraConfig fields, the layers it adapts, the random bases shared by
// all layers of an adapter (which Python's state dict also holds under every layer's key), and the checks Python
// makes across adapters.

#include <set>

#include <c10/util/Exception.h>

#include <peft/error.h>

#include "tuners/randlora/layer.h"

namespace peft::detail::randlora {
namespace {

class RandLora final : public MethodOf<RandLoraConfig> {
 public:
  RandLora() : MethodOf("randlora_") {
    layers({LayerKind::Linear, LayerKind::LinearLike});
    field(PEFT_FIELD(r)).check(positive());
    field(PEFT_FIELD(projection_prng_key));
    field(PEFT_FIELD(save_projection));
    field(PEFT_FIELD(sparse));
    field(PEFT_FIELD(very_sparse));
    field(PEFT_FIELD(randlora_dropout)).check(probability());
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(randlora_alpha));
    field(PEFT_FIELD(bias)).check(bias_choice("randlora_only"));
    field(PEFT_FIELD(init_weights));
    without_common_fields({"exclude_modules"});
    // Python's tuner holds randlora_A / randlora_B and every layer references them: its state dict has them under
    // each layer's key (save_pretrained adds the tuner's own entry); with save_projection=false none of them.
    auto saved = [](const RandLoraConfig& c) { return c.save_projection(); };
    shares("randlora_A", saved, /*layer_keys=*/true);
    shares("randlora_B", saved, /*layer_keys=*/true);
    rank_keys({{"randlora_lambda", 0}});
    rank_fields({"r", "", "randlora_alpha", ""});
  }

  std::unique_ptr<AdapterBuilder> start(RandLoraConfig& config) const override { return make_builder(*this, config); }

  bool checks_other_adapters() const override { return true; }

  // Python's RandLoraModel._check_new_adapter_config.
  void check_new_adapter(const PeftConfig& base, const std::vector<std::shared_ptr<const PeftConfig>>& others) const override {
    const auto& config = static_cast<const RandLoraConfig&>(base);
    std::set<bool> save_projection{config.save_projection()};
    for (const auto& other : others) {
      if (other->peft_type() != peft_type()) continue;
      const auto& existing = static_cast<const RandLoraConfig&>(*other);
      if (existing.projection_prng_key() != config.projection_prng_key()) {
        throw ConfigError("RandLora PRNG initialisation key must be the same for all adapters. Got "
                          "config.projection_prng_key=" + std::to_string(config.projection_prng_key()) +
                          " but previous config had " + std::to_string(existing.projection_prng_key()) + ".");
      }
      save_projection.insert(existing.save_projection());
    }
    if (save_projection.size() > 1) {
      throw ConfigError("RandLora projection weights must be saved for all adapters or none, but got multiple "
                        "different values: [False, True]");
    }
  }

 protected:
  void check(const RandLoraConfig& config) const override {
    if (!config.save_projection()) {
      TORCH_WARN("Specified to not save basis_A and basis_B within the state dictionary, instead they will be restored "
                 "using the PRNG key store in `config.projection_prng_key`. Consider setting `config.save_projection` "
                 "to `True` to guarantee restoring the checkpoint correctly on all system configurations.");
    }
  }
};

}  // namespace
}  // namespace peft::detail::randlora

PEFT_REGISTER_METHOD(randlora, peft::detail::randlora::RandLora)
