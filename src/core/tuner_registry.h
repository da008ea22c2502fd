#pragma once

// The adapter methods peft-cpp knows, and what each must provide to the shared machinery (matching,
// module walking, state dicts and config files live once, in src/core). Adding a method is a folder under
// src/tuners/ with a Tuner subclass, plus one line in tuner_registry.cpp.

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <peft/config.h>
#include <peft/state_dict.h>

#include "core/base_layer.h"
#include "core/tuner_layer.h"

namespace peft::detail {

class JsonConfigReader;

/// What a tuner needs to adapt one layer.
struct LayerRequest {
  std::shared_ptr<const PeftConfig> config;  // effective config (targets expanded)
  std::string adapter_name;
  std::string module_name;                   // full dotted name in the model
  BaseLayer base;
  TunerLayer* existing = nullptr;            // this method's tuner already on the layer, if any
  bool low_cpu_mem_usage = false;
};

class Tuner {
 public:
  virtual ~Tuner() = default;

  virtual const char* peft_type() const = 0;
  /// Prefix of the method's checkpoint keys ("lora_"); a state dict key `<module>.<prefix>...` names the
  /// module `<module>` (Python PEFT's PEFT_TYPE_TO_PREFIX_MAPPING).
  virtual const char* prefix() const = 0;

  /// Reads the method's fields from adapter_config.json (common fields are read by the caller).
  virtual std::shared_ptr<PeftConfig> read_config(JsonConfigReader& reader) const = 0;
  /// Writes the method's fields (common fields are written by the caller).
  virtual void write_config(const PeftConfig& config, nlohmann::json& out) const = 0;

  /// Whether check_new_adapter needs the configs of the adapters already in the model (collecting them
  /// costs a walk over every adapter of every layer).
  virtual bool checks_other_adapters() const { return false; }
  /// Checks a new adapter's config against the adapters already in the model.
  virtual void check_new_adapter(const PeftConfig& config,
                                 const std::vector<std::shared_ptr<const PeftConfig>>& existing) const;

  /// The error for a selected module the method cannot adapt (Python PEFT's "Target module ... is not
  /// supported" text for LoRA).
  virtual std::string unsupported_layer_message(const torch::nn::Module& module) const;

  /// Final touches to an adapter's checkpoint state dict (AdaLoRA keeps only the allocated ranks).
  virtual void adjust_checkpoint(const PeftConfig& config, StateDict& state_dict) const {}

  /// Starts one injection. `config` is the injection's own copy (targets expanded), which the planner may
  /// adjust as Python PEFT adjusts its config (e.g. fan_in_fan_out for the layer type found).
  virtual std::unique_ptr<class LayerPlanner> make_planner(PeftConfig& config) const = 0;
};

/// Prepares the layers of one injection; holds what is worth computing once (compiled patterns).
class LayerPlanner {
 public:
  virtual ~LayerPlanner() = default;
  /// Prepares adding the adapter to one layer; throws UnsupportedLayerError for layer types the method
  /// cannot adapt, and ConfigError for values that do not fit the layer.
  virtual std::unique_ptr<PendingChange> prepare_layer(const LayerRequest& request) = 0;
};

/// The tuner for a peft_type ("LORA"), or nullptr.
const Tuner* find_tuner_for(const std::string& peft_type);
/// Every registered peft_type, for error messages.
std::vector<std::string> registered_peft_types();

}  // namespace peft::detail
