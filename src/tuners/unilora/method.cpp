// UniLoRA's registration: Python PEFT's UniLoraConfig fields and their checks (with Python's texts), the layers it
// adapts, and theta_d, the vector shared by all layers of an adapter.

#include <set>

#include <nlohmann/json.hpp>

#include <peft/error.h>

#include "tuners/unilora/layer.h"

namespace peft::detail::unilora {
namespace {

/// A number as Python's f-string shows it (1.5, -0.1, 2.0).
std::string python_number(double value) { return nlohmann::json(value).dump(); }

std::function<void(const std::string&, const int64_t&)> positive_integer() {
  return [](const std::string& name, const int64_t& value) {
    if (value <= 0) throw ConfigError("`" + name + "` should be a positive integer, got " + std::to_string(value) + ".");
  };
}

class UniLora final : public MethodOf<UniLoraConfig> {
 public:
  UniLora() : MethodOf("unilora_") {
    layers({LayerKind::Linear, LayerKind::LinearLike});
    field(PEFT_FIELD(r)).check(positive_integer());
    field(PEFT_FIELD(proj_seed)).check([](const std::string& name, const int64_t& value) {
      // Python fails in numpy's SeedSequence at injection instead.
      if (value < 0) {
        throw ConfigError("`" + name + "` must be a non-negative integer (numpy's SeedSequence: expected non-negative "
                          "integer), got " + std::to_string(value) + ".");
      }
    });
    field(PEFT_FIELD(theta_d_length)).check(positive_integer());
    field(PEFT_FIELD(unilora_dropout)).check([](const std::string& name, const double& value) {
      if (!(value >= 0.0 && value <= 1.0)) {
        throw ConfigError("`" + name + "` should be between 0.0 and 1.0, got " + python_number(value) + ".");
      }
    });
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(bias)).check([](const std::string& name, const std::string& value) {
      if (value != "none" && value != "all" && value != "unilora_only") {
        throw ConfigError("`" + name + "` should be 'none', 'all', or 'unilora_only', got " + value + ".");
      }
    });
    field(PEFT_FIELD(init_theta_d_bound)).check([](const std::string& name, const double& value) {
      if (!(value > 0)) throw ConfigError("`" + name + "` should be a positive float, got " + python_number(value) + ".");
    });
    field(PEFT_FIELD(init_weights));
    field(PEFT_FIELD(save_indices));
    without_common_fields({"exclude_modules"});
    // Python's tuner holds theta_d; saved as "base_model.unilora_theta_d".
    shares("unilora_theta_d");
    rank_keys({{"unilora_indices_A", 0}, {"unilora_indices_B", 1}, {"unilora_scales_A", 0}, {"unilora_scales_B", 1}});
    rank_fields({"r", "", "", ""});
  }

  std::unique_ptr<AdapterBuilder> start(UniLoraConfig& config) const override { return make_builder(*this, config); }

  bool checks_other_adapters() const override { return true; }

  // A layer's index and scale buffers are saved for all its adapters or for none (Python's BufferDicts have one
  // persistent flag per layer, which the last adapter added sets).
  void check_new_adapter(const PeftConfig& base, const std::vector<std::shared_ptr<const PeftConfig>>& others) const override {
    const auto& config = static_cast<const UniLoraConfig&>(base);
    for (const auto& other : others) {
      if (other->peft_type() != peft_type()) continue;
      if (static_cast<const UniLoraConfig&>(*other).save_indices() != config.save_indices()) {
        throw ConfigError(std::string("UniLora index buffers must be saved for all adapters or none, but the new adapter "
                                      "has save_indices=") +
                          (config.save_indices() ? "True" : "False") + " and an existing one the opposite.");
      }
    }
  }
};

}  // namespace
}  // namespace peft::detail::unilora

PEFT_REGISTER_METHOD(unilora, peft::detail::unilora::UniLora)
