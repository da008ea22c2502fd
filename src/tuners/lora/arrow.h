#pragma once

// Arrow routing on one LoRA Linear layer (Python PEFT's ArrowLoraLinearLayer and ArrowLinearVariant): the adapter
// carrying an ArrowConfig (the "arrow_router") adds, per token, a softmax-weighted mix of the layer's task LoRAs.
// Its own lora_A / lora_B are never used. State that Python computes lazily at the first forward (GenKnowSub's
// in-place subtraction, the prototypes) lives in one ArrowRouter per layer and router adapter.

#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <peft/tuners/lora/config.h>

#include "core/adapter_layer.h"
#include "core/config_fields.h"

namespace peft::detail {

/// arrow_config in adapter_config.json: null, or Python's asdict(ArrowConfig).
template <>
struct JsonCodec<std::optional<ArrowConfig>> {
  static std::optional<ArrowConfig> read(JsonConfigReader& in, const std::string& key,
                                         const std::optional<ArrowConfig>& fallback);
  static nlohmann::json write(const std::optional<ArrowConfig>& value);
};

namespace lora {

struct LoraAdapter;

/// The adapter name create_arrow_model gives the router; Python's on_adapter_change never counts it as a task.
inline const std::string kArrowRouterName = "arrow_router";

/// ArrowConfig.__post_init__'s checks (ConfigError with Python's messages).
void check_arrow_config(const ArrowConfig& config);
/// A LoraConfig with arrow_config: its ArrowConfig, and no other LoRA variant with it (Python's
/// resolve_lora_variant: "Invalid or unsupported variant combination").
void check_arrow_lora_config(const LoraConfig& config);

/// Whether `name` is one of GenKnowSub's general adapters as Python's on_adapter_change sees them: gks_<digits>.
bool is_gks_adapter_name(const std::string& name);

class ArrowRouter {
 public:
  explicit ArrowRouter(const ArrowConfig& config);

  /// Python's ArrowLinearVariant.forward less the base output: GenKnowSub (first call), the prototypes (first call,
  /// and again after the layer's task adapters changed), then the routed delta for `x`, shaped (..., out_features).
  /// `router` is the record holding this object; `state` the layer's snapshot of the calling forward.
  at::Tensor delta(const LoraAdapter& router, const AdapterSnapshot& state, const at::Tensor& x,
                   const std::string& layer_name);

 private:
  struct Prepared {
    std::vector<std::string> names;
    at::Tensor prototypes;  // (E, in_features)
  };
  // Each is called with mutex_ held.
  void on_adapter_change(const AdapterSnapshot& state);
  void gen_know_sub(const AdapterSnapshot& state, const std::string& layer_name);
  void build_prototypes(const AdapterSnapshot& state, const std::string& layer_name);

  const ArrowConfig config_;
  std::mutex mutex_;
  std::vector<std::string> task_names_;
  std::vector<std::string> gks_added_;
  bool gks_done_ = false;
  bool prototypes_ready_ = false;
  at::Tensor prototypes_;
};

}  // namespace lora
}  // namespace peft::detail
