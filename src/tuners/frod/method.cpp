// FRoD's registration: Python PEFT's FrodConfig fields, the layers it adapts, the per-category tensors shared by
// the layers of an adapter (model-level keys "base_model.frod_V.<category>", ...), and the checks Python makes
// across adapters and on load.

#include <set>

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <peft/error.h>

#include "tuners/frod/layer.h"

namespace peft::detail::frod {
namespace {

std::string python_bools(const std::set<bool>& values) {
  std::string out = "[";
  for (bool v : values) out += std::string(out.size() > 1 ? ", " : "") + (v ? "True" : "False");
  return out + "]";
}

const char* const kProjectionPrefixes[] = {"base_model.frod_V.", "base_model.frod_s_indices.", "base_model.frod_s_size."};

class Frod final : public MethodOf<FrodConfig> {
 public:
  Frod() : MethodOf("frod_") {
    layers({LayerKind::Linear, LayerKind::LinearLike});
    field(PEFT_FIELD(projection_prng_key));
    field(PEFT_FIELD(save_projection));
    field(PEFT_FIELD(frod_dropout)).check(probability());
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(bias)).check(bias_choice("frod_only"));
    field(PEFT_FIELD(init_weights));
    field(PEFT_FIELD(sparse_rate));
    field(PEFT_FIELD(regularization_alpha));
    field(PEFT_FIELD(progressbar));
    field(PEFT_FIELD(runtime_offload_base_weight));
    without_common_fields({"exclude_modules"});
    // Python's tuner holds one V / sparse pattern per category of layers and adapter; save_projection decides
    // whether checkpoints hold them.
    auto saved = [](const FrodConfig& c) { return c.save_projection(); };
    for (const char* name : {"frod_V", "frod_s_indices", "frod_s_size"}) shares(name, saved, false, category_of);
  }

  std::unique_ptr<AdapterBuilder> start(FrodConfig& config) const override {
    if (config.runtime_offload_base_weight()) {
      TORCH_WARN("FrodConfig.runtime_offload_base_weight=True: peft-cpp leaves the base weights where they are "
                 "(the outputs are the same; only Python's device placement differs).");
    }
    return make_builder(*this, config);
  }

  bool checks_other_adapters() const override { return true; }

  // Python's FrodModel._check_new_adapter_config.
  void check_new_adapter(const PeftConfig& base, const std::vector<std::shared_ptr<const PeftConfig>>& others) const override {
    const auto& config = static_cast<const FrodConfig&>(base);
    std::set<bool> save_projection{config.save_projection()}, offload{config.runtime_offload_base_weight()};
    for (const auto& other : others) {
      if (other->peft_type() != peft_type()) continue;
      const auto& existing = static_cast<const FrodConfig&>(*other);
      if (existing.projection_prng_key() != config.projection_prng_key()) {
        throw ConfigError("FRoD projection initialization key must be the same for all adapters. Got "
                          "config.projection_prng_key=" + std::to_string(config.projection_prng_key()) +
                          " but previous config had " + std::to_string(existing.projection_prng_key()) + ".");
      }
      save_projection.insert(existing.save_projection());
      offload.insert(existing.runtime_offload_base_weight());
    }
    if (save_projection.size() > 1) {
      throw ConfigError("FRoD projection weights must be saved for all adapters or none, but got multiple different "
                        "values: " + python_bools(save_projection));
    }
    if (offload.size() > 1) {
      throw ConfigError("FRoD runtime base-weight offloading must be enabled for all adapters or none, but got "
                        "multiple different values: " + python_bools(offload));
    }
  }

  // Python's FrodModel._remap_adapter_state_dict_for_load.
  std::optional<StateDict> checkpoint_for_load(const PeftConfig& base, const StateDict& state_dict) const override {
    const auto& config = static_cast<const FrodConfig&>(base);
    bool present = false;
    for (const auto& item : state_dict) {
      for (const char* prefix : kProjectionPrefixes) present = present || item.key().rfind(prefix, 0) == 0;
    }
    if (config.save_projection() && !present) {
      throw StateDictError(
          "Specified to load FRoD projection tensors from state dictionary however they were not present. If this "
          "checkpoint was saved with `save_projection=False`, set `peft_config.save_projection` to `False` before "
          "loading so the projections are regenerated from the base model weights. Otherwise, re-save the adapter "
          "with `save_projection=True` to include these tensors.");
    }
    if (!config.save_projection() && present) {
      TORCH_WARN("Specified to not load FRoD projection tensors from state dictionary however they are present. "
                 "Consider using them to ensure checkpoint loading is correct by setting "
                 "`peft_config.save_projection = True`.");
    }
    return std::nullopt;
  }

 protected:
  // Python's FrodConfig.__post_init__.
  void check(const FrodConfig& config) const override {
    if (config.sparse_rate() < 0 || config.sparse_rate() > 1) {
      throw ConfigError("`sparse_rate` should be between 0 and 1, got " + nlohmann::json(config.sparse_rate()).dump() +
                        ".");
    }
  }
};

}  // namespace
}  // namespace peft::detail::frod

PEFT_REGISTER_METHOD(frod, peft::detail::frod::Frod)
