// Super-Tuning's registration: Python PEFT's SupertuningConfig fields, its checks and the layers it adapts.

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <peft/error.h>

#include "core/json_config.h"
#include "tuners/supertuning/layer.h"

namespace peft::detail::supertuning {
namespace {

/// A float as Python prints it.
std::string py(double value) { return nlohmann::json(value).dump(); }

class Supertuning final : public MethodOf<SupertuningConfig> {
 public:
  Supertuning() : MethodOf("supertuning_") {
    layers({LayerKind::Linear});
    field(PEFT_FIELD(sparsity)).check([](const std::string&, const double& sparsity) {
      if (!(sparsity >= 0.0 && sparsity < 1.0)) throw ConfigError("sparsity must be in [0.0, 1.0), got " + py(sparsity));
    });
    field(PEFT_FIELD(select_top));
    field(PEFT_FIELD(r)).check([](const std::string&, const std::optional<int64_t>& r) {
      if (r && *r <= 0) throw ConfigError("r must be a positive integer or None, got " + std::to_string(*r));
    });
    // An optional float: null or a number.
    custom(
        "lora_alpha",
        [](JsonConfigReader& in, SupertuningConfig& c) {
          if (!in.raw("lora_alpha")) {
            if (in.has("lora_alpha")) c.lora_alpha(std::nullopt);
            return;
          }
          c.lora_alpha(in.get_number("lora_alpha", 0.0));
        },
        [](const SupertuningConfig& c) { return c.lora_alpha() ? nlohmann::json(*c.lora_alpha()) : nlohmann::json(); });
    field(PEFT_FIELD(lora_dropout)).check([](const std::string&, const double& p) {
      if (!(p >= 0.0 && p < 1.0)) throw ConfigError("lora_dropout must be in [0.0, 1.0), got " + py(p));
    });
    field(PEFT_FIELD(init_weights));
    field(PEFT_FIELD(save_precomputed_indices));
    without_common_fields({"exclude_modules", "layers_to_transform", "layers_pattern"});
    rank_keys({{"supertuning_lora_A.weight", 0}});
    rank_fields({"r", "", "lora_alpha", ""});
  }

  std::unique_ptr<AdapterBuilder> start(SupertuningConfig& config) const override {
    // Python's __post_init__ fills in the default scaling (and saves it) and warns about recomputed indices.
    if (config.r() && !config.lora_alpha()) config.lora_alpha(2.0 * static_cast<double>(*config.r()));
    if (!config.save_precomputed_indices()) {
      TORCH_WARN("save_precomputed_indices=False: sparse-support indices will be recomputed from base weight "
                 "magnitudes at load time. This assumes the base model is identical to training time; numerical "
                 "drift can cause topk tie-breaks to differ.");
    }
    return make_builder(*this, config);
  }

 protected:
  void check(const SupertuningConfig& c) const override {
    if (!c.r() && c.lora_alpha()) {
      throw ConfigError("lora_alpha is set but r is None \u2014 Supra mode requires an explicit r.");
    }
  }
};

}  // namespace
}  // namespace peft::detail::supertuning

PEFT_REGISTER_METHOD(supertuning, peft::detail::supertuning::Supertuning)
