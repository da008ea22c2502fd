#pragma once

#include <optional>
#include <string>

#include <peft/config.h>
#include <peft/state_dict.h>

namespace peft::detail {

/// inject_adapter_in_model, also checking (before anything is attached) that `weights`, when given, fit
/// the adapter's tensors in shape and dtype. `state_dict` selects the layers, as in the public API.
void inject_checked(const PeftConfig& config, torch::nn::Module& model, const std::string& adapter_name,
                    bool low_cpu_mem_usage, const std::optional<StateDict>& state_dict, const StateDict* weights);

}  // namespace peft::detail
