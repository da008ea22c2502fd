#pragma once

// LoRA's ensure_weight_tying (Python PEFT's BaseTuner._check_tied_modules and LoraModel._add_targets_to_tie /
// _add_modules_to_save_to_tie): layers tied to the input embedding keep using the embedding's adapter. Python learns
// the tie from the model config; a LibTorch model ties by sharing the tensor, so the layers tied to an Embedding are
// those whose weight is that Embedding's weight.

#include <map>
#include <string>
#include <vector>

#include <peft/tuners/lora/config.h>

#include "core/method.h"

namespace peft::detail::lora {

struct LoraAdapter;

/// What ensure_weight_tying asks of one injection, decided (and the config rewritten as Python rewrites it) before
/// anything is prepared.
struct TyingPlan {
  std::vector<std::string> extra_targets;             // layers to adapt beyond the matched targets (embedding first)
  std::map<std::string, std::string> tied_targets;    // tied layer -> embedding whose LoRA factors it uses
  std::vector<std::string> tied_copies;               // tied layers whose modules_to_save copy is the embedding's
  std::string embedding;
};
TyingPlan plan_weight_tying(LoraConfig& config, const std::vector<LayerRequest>& targets,
                            const std::vector<std::pair<std::string, torch::nn::Module*>>& layers);

/// Python's tied_adapter: the tied Linear's lora_A is the embedding's lora_embedding_B transposed and its lora_B the
/// embedding's lora_embedding_A transposed (views of the same storage, each its own leaf as Python's
/// nn.Parameter(view)), re-initialised in place as Python's update_layer then does.
void tie_to_embedding(LoraAdapter& tied, const LoraAdapter& embedding, const LoraConfig& config, const std::string& name);

/// Python's modules_to_tie: the modules_to_save copies of the tied layers, each using the weight of the embedding's
/// copy (prepared by the same injection).
std::vector<AuxiliaryChange> tied_copies(const AuxiliaryRequest& request, const TyingPlan& plan);

}  // namespace peft::detail::lora
