#pragma once

// PiSSA / OLoRA / CorDA adapters saved as plain LoRA (Python PEFT's save_pretrained(...,
// path_initial_model_for_weight_conversion=...) and LoraModel.subtract_mutated_init).
//
// Those inits move part of the base weight into the adapter (W = W_res + B0 A0), so a trained adapter only works on
// W_res. With the adapter as it was right after injection saved first (init_lora_weights set to true, as Python's
// PiSSA example does), the trained one can be written as a LoRA of rank 2r that works on the original base weight:
// delta W = B A - B0 A0 = [B | -B0] [A ; A0].

#include <string>

#include <peft/export.h>
#include <peft/module_ref.h>
#include <peft/state_dict.h>

namespace peft {

/// Python's LoraModel.subtract_mutated_init: for every lora_A key of `trained` (get_peft_model_state_dict keys, with
/// or without "base_model.model."), cat([A, A0], dim 0); for every lora_B key, cat([B, -B0], dim 1), A0/B0 being
/// `initial`'s tensor of that key. Other keys are left out, as in Python (DoRA magnitudes, biases, embedding LoRA).
/// A key missing from `initial` or a tensor of another shape (Python would stack those too, into an adapter whose rank
/// does not fit its config) throws peft::StateDictError naming the key.
PEFT_API StateDict subtract_mutated_init(const StateDict& trained, const StateDict& initial);

/// Python's PeftModel.save_pretrained(directory, path_initial_model_for_weight_conversion=initial_directory) for a
/// LoRA adapter: writes `directory` (or directory/<adapter_name>) as a plain LoRA adapter of rank 2r (r, lora_alpha —
/// times sqrt(2) with use_rslora —, rank_pattern and alpha_pattern doubled, init_lora_weights true) whose tensors are
/// subtract_mutated_init of the adapter's and `initial_directory`'s. Like Python, it also rewrites
/// `initial_directory/adapter_config.json` with the adapter's config and init_lora_weights true. Refused as Python
/// refuses it: use_rslora together with rank_pattern or alpha_pattern (peft::ConfigError); an adapter not
/// initialised with pissa/olora/corda/true gives Python's warning. Everything is read and checked before any file is
/// written; each file is written atomically.
PEFT_API void save_adapter_as_lora(ConstModuleRef model, const std::string& directory,
                                   const std::string& initial_directory, const std::string& adapter_name = "default");

}  // namespace peft
