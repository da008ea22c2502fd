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

/// get_peft_model_state_dict, or (`for_file`) what save_adapter writes before prefixing: the same plus the
/// model-level keys only files hold (Method::SharedContainer::layer_keys).
StateDict adapter_state_dict(const torch::nn::Module& model, const std::string& adapter_name, bool for_file);

/// Python's save_embedding_layers: decides (with Python's warnings) and adds the embedding layers' base tensors.
void add_embedding_layers(const torch::nn::Module& model, const std::string& adapter_name,
                          const PeftStateDictOptions& options, StateDict& out);

}  // namespace peft::detail
