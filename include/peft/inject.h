#pragma once

#include <optional>
#include <string>

#include <peft/config.h>
#include <peft/error.h>
#include <peft/export.h>
#include <peft/module_ref.h>
#include <peft/state_dict.h>

namespace peft {

/// Injects the adapter described by `config` into `model`, in place: every selected layer gets the
/// adapter's modules as children (e.g. `linear.lora_A.default.weight`), base parameter names are kept,
/// and the model's own forward runs through the adapters.
///
/// - `model` is a TORCH_MODULE holder, a std::shared_ptr to a module, or the module.
/// - A second call with another `adapter_name` adds that adapter; the newest becomes the active one.
/// - `low_cpu_mem_usage`: create the adapter's tensors on the meta device (no memory, no init); load them
///   with set_peft_model_state_dict(..., low_cpu_mem_usage = true).
/// - `state_dict`: adapt exactly the layers its keys name (values are not loaded); `target_modules` may be
///   unset. A difference from what the config would select is reported with a warning.
/// Throws peft::ConfigError / NoMatchingPeftModuleError / UnsupportedLayerError / AdapterNameError /
/// RoutingError (a selected layer's calls could not reach the adapter); on any error the model is left
/// exactly as it was.
PEFT_API void inject_adapter_in_model(const PeftConfig& config, ModuleRef model,
                                      const std::string& adapter_name = "default", bool low_cpu_mem_usage = false,
                                      const std::optional<StateDict>& state_dict = std::nullopt);

}  // namespace peft
