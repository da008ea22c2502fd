// OSF's registration: Python PEFT's OSFConfig fields and the layers it adapts.

#include <peft/error.h>

#include "core/json_config.h"
#include "tuners/osf/layer.h"

namespace peft::detail::osf {
namespace {

/// A JSON int or float as an OsfRank (Python's isinstance(value, float) decides how it is used).
std::optional<OsfRank> rank_from_json(const nlohmann::json& value) {
  if (value.is_number_integer()) {
    if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return OsfRank(static_cast<long long>(value.get<int64_t>()));
  }
  if (value.is_number_float()) return OsfRank(value.get<double>());
  return std::nullopt;
}

nlohmann::json rank_to_json(const OsfRank& rank) {
  return rank.is_float() ? nlohmann::json(rank.float_value()) : nlohmann::json(rank.int_value());
}

class Osf final : public MethodOf<OsfConfig> {
 public:
  Osf() : MethodOf("osf_") {
    // Python: torch.nn.Linear only (other layers are skipped there; here they are refused by name).
    layers({LayerKind::Linear});
    custom(
        "effective_rank",
        [](JsonConfigReader& in, OsfConfig& config) {
          const nlohmann::json* value = in.raw("effective_rank");
          if (!value) {
            config.effective_rank(std::nullopt);
            return;
          }
          const std::optional<OsfRank> rank = rank_from_json(*value);
          if (!rank) in.fail("effective_rank", "must be null, an integer or a float, got " + value->dump());
          config.effective_rank(rank);
        },
        [](const OsfConfig& config) {
          return config.effective_rank() ? rank_to_json(*config.effective_rank()) : nlohmann::json();
        });
    custom(
        "rank_pattern",
        [](JsonConfigReader& in, OsfConfig& config) {
          const nlohmann::json* value = in.raw("rank_pattern");
          if (!value) {
            config.rank_pattern(std::nullopt);
            return;
          }
          if (!value->is_object()) {
            in.fail("rank_pattern", "must be an object mapping patterns to integers or floats, got " + value->dump());
          }
          PatternMap<OsfRank> patterns;
          for (auto it = value->begin(); it != value->end(); ++it) {
            const std::optional<OsfRank> rank = rank_from_json(it.value());
            if (!rank) {
              in.fail("rank_pattern", "value for '" + it.key() + "' must be an integer or a float, got " +
                                          it.value().dump());
            }
            patterns.emplace_back(it.key(), *rank);
          }
          config.rank_pattern(std::move(patterns));
        },
        [](const OsfConfig& config) {
          if (!config.rank_pattern()) return nlohmann::json();
          nlohmann::json out = nlohmann::json::object();
          for (const auto& [key, rank] : *config.rank_pattern()) out[key] = rank_to_json(rank);
          return out;
        });
    custom(
        "init_weights",
        [](JsonConfigReader& in, OsfConfig& config) {
          if (!in.raw("init_weights")) {
            config.init_weights(std::nullopt);
            return;
          }
          config.init_weights(in.get_bool("init_weights", false));
        },
        [](const OsfConfig& config) {
          return config.init_weights() ? nlohmann::json(*config.init_weights()) : nlohmann::json();
        });
    custom(
        "target_svd_config",
        [](JsonConfigReader& in, OsfConfig& config) {
          if (!in.raw("target_svd_config")) {
            config.target_svd_config(std::nullopt);
            return;
          }
          config.target_svd_config(in.get_int_map("target_svd_config"));
        },
        [](const OsfConfig& config) {
          return config.target_svd_config() ? pattern_to_json(*config.target_svd_config()) : nlohmann::json();
        });
    without_common_fields({"exclude_modules", "layers_to_transform", "layers_pattern"});
  }

  /// Python's _prepare_adapter_config for a model without a known model type: every Linear layer.
  TargetModules default_target_modules() const override { return TargetModules::all_linear(); }

  std::unique_ptr<AdapterBuilder> start(OsfConfig& config) const override { return make_builder(*this, config); }
};

}  // namespace
}  // namespace peft::detail::osf

PEFT_REGISTER_METHOD(osf, peft::detail::osf::Osf)
