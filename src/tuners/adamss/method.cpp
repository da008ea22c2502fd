// AdaMSS's registration: Python PEFT's AdamssConfig fields, its __post_init__ checks, and the layers it adapts.

#include <nlohmann/json.hpp>

#include <peft/error.h>

#include "core/json_config.h"
#include "tuners/adamss/layer.h"

namespace peft::detail::adamss {
namespace {

/// How Python's f-string shows a JSON value of init_weights ("{self.init_weights}").
std::string python_str(const nlohmann::json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_boolean()) return value.get<bool>() ? "True" : "False";
  if (value.is_null()) return "None";
  return value.dump();
}

class Adamss final : public MethodOf<AdamssConfig> {
 public:
  Adamss() : MethodOf("adamss_") {
    // Python: torch.nn.Linear only.
    layers({LayerKind::Linear});
    field(PEFT_FIELD(r));
    field(PEFT_FIELD(num_subspaces));
    field(PEFT_FIELD(subspace_rank));
    custom(
        "init_weights",
        [](JsonConfigReader& in, AdamssConfig& config) {
          const nlohmann::json* raw = in.raw("init_weights");
          // Python turns False into None; "orthogonal" and None are the only values it accepts.
          if (!raw || raw->is_null() || (raw->is_boolean() && !raw->get<bool>())) {
            config.init_weights(std::nullopt);
          } else if (raw->is_string() && raw->get<std::string>() == "orthogonal") {
            config.init_weights(std::string("orthogonal"));
          } else {
            in.fail("init_weights", "init_weights must be 'orthogonal' or None, got " + python_str(*raw));
          }
        },
        [](const AdamssConfig& config) {
          return config.init_weights() ? nlohmann::json(*config.init_weights()) : nlohmann::json();
        });
    field(PEFT_FIELD(use_asa));
    field(PEFT_FIELD(asa_target_subspaces));
    field(PEFT_FIELD(init_warmup));
    field(PEFT_FIELD(final_warmup));
    field(PEFT_FIELD(mask_interval));
    field(PEFT_FIELD(asa_importance_beta));
    field(PEFT_FIELD(asa_uncertainty_beta));
    field(PEFT_FIELD(asa_schedule_exponent));
    field(PEFT_FIELD(use_dynamic_rank));
    field(PEFT_FIELD(svd_threshold));
    field(PEFT_FIELD(random_seed));
    without_common_fields({"exclude_modules"});
  }

  std::unique_ptr<AdapterBuilder> start(AdamssConfig& config) const override { return make_builder(*this, config); }

 protected:
  /// Python's AdamssConfig.__post_init__, plus the values with which Python fails later (in the SVD or k-means).
  void check(const AdamssConfig& config) const override {
    if (config.init_weights() && *config.init_weights() != "orthogonal") {
      throw ConfigError("init_weights must be 'orthogonal' or None, got " + *config.init_weights());
    }
    if (config.use_asa()) {
      if (config.mask_interval() <= 0) {
        throw ConfigError("`mask_interval` must be a positive integer when `use_asa=True`, got " +
                          std::to_string(config.mask_interval()) + ".");
      }
      if (config.init_warmup() >= config.final_warmup()) {
        throw ConfigError(
            "`init_warmup` must be smaller than `final_warmup` when `use_asa=True` so that ASA has a non-empty pruning "
            "ramp, got init_warmup=" +
            std::to_string(config.init_warmup()) + " and final_warmup=" + std::to_string(config.final_warmup()) + ".");
      }
      if (config.asa_target_subspaces() <= 0) {
        throw ConfigError("`asa_target_subspaces` must be a positive integer when `use_asa=True`, got " +
                          std::to_string(config.asa_target_subspaces()) + ".");
      }
      if (config.asa_schedule_exponent() <= 0) {
        throw ConfigError("`asa_schedule_exponent` must be a positive number when `use_asa=True`, got " +
                          nlohmann::json(config.asa_schedule_exponent()).dump() + ".");
      }
    }
    if (config.r() <= 0) {
      throw ConfigError("AdaMSS's `r` must be a positive integer, got " + std::to_string(config.r()) +
                        " (Python PEFT fails in the SVD then).");
    }
    if (config.num_subspaces() <= 0) {
      throw ConfigError("The 'n_clusters' parameter of KMeans must be an int in the range [1, inf). Got " +
                        std::to_string(config.num_subspaces()) + " instead.");
    }
    if (config.subspace_rank() < 0) {
      throw ConfigError("AdaMSS's `subspace_rank` must not be negative, got " + std::to_string(config.subspace_rank()) +
                        " (Python PEFT fails when it creates the subspaces then).");
    }
  }
};

}  // namespace
}  // namespace peft::detail::adamss

PEFT_REGISTER_METHOD(adamss, peft::detail::adamss::Adamss)
