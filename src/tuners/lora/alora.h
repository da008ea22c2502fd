#pragma once

// Activated LoRA in the LoRA layers (Python PEFT's ALoraLinearVariant): which layers may carry it, the masked
// forward, and the calling thread's offsets (installed by peft::AloraScope, <peft/tuners/lora/alora.h>).

#include <string>
#include <unordered_set>

#include <ATen/core/Tensor.h>

#include <peft/tuners/lora/alora.h>
#include <peft/tuners/lora/config.h>

#include "core/adapter_layer.h"
#include "core/layer_kinds.h"

namespace peft {

struct AloraScope::State {
  AloraOffsets offsets;
  std::unordered_set<const detail::AdapterLayer*> layers;  // the LoRA layers of the scoped model
};

}  // namespace peft

namespace peft::detail::lora {

struct LoraAdapter;

/// Whether the config makes its adapters aLoRA ones (Python: a truthy alora_invocation_tokens; [] is plain LoRA).
bool is_alora(const LoraConfig& config);

/// Python's resolve_lora_variant for an aLoRA config on a layer of `kind`: "Invalid or unsupported variant
/// combination: (...)" (ConfigError naming the layer) for other layer kinds than Linear / LinearLike and for DoRA,
/// MiCA or BD-LoRA beside aLoRA (Arrow's own check refuses Arrow with it).
void check_alora_layer(const LoraConfig& config, LayerKind kind, const std::string& module_name);

/// The calling thread's innermost AloraScope, or nullptr; AloraScope installs and restores it.
const AloraScope::State* current_alora_state();
void set_current_alora_state(const AloraScope::State* state);

/// The calling thread's offsets if its innermost AloraScope covers `layer`, else nullptr.
const AloraOffsets* alora_offsets_for(const AdapterLayer& layer);

/// ALoraLinearVariant.forward: `result` (the base output, (batch, tokens, out) or (batch, out)) with the adapter's
/// scaled B A dropout(x) added on the last offsets[i] tokens of row i; `offsets` nullptr (no scope) adds nothing but
/// keeps the adapter in the graph (zero gradients, as Python's empty mask) and warns once.
at::Tensor alora_forward(const LoraAdapter& adapter, const at::Tensor& x, const at::Tensor& result,
                         const AloraOffsets* offsets, const std::string& module_name);

/// _mixed_batch_forward's aLoRA branch: the rows `rows` (int64, CPU; `index` the same on x's device) of `result`
/// replaced by alora_forward of those rows with their offsets.
void alora_forward_rows(const LoraAdapter& adapter, const at::Tensor& x, at::Tensor& result, const at::Tensor& rows,
                        const at::Tensor& index, const AloraOffsets* offsets, const std::string& module_name);

}  // namespace peft::detail::lora
