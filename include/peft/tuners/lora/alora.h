#pragma once

// Activated LoRA (aLoRA, LoraConfig::alora_invocation_tokens): how the per-row token offsets reach the layers.
// Python PEFT's PeftModelForCausalLM.forward computes `alora_offsets` from input_ids and hands them to every LoRA
// layer as a forward kwarg (pre-forward hooks); a C++ model's forward takes no such argument, so the offsets are
// installed for the calling thread by an AloraScope instead:
//
//   peft::AloraScope scope(model, input_ids);   // Python's offsets for this batch, for the forwards of this thread
//   auto logits = model->forward(input_ids);    // aLoRA adapters act on each row's tokens from its invocation on
//
// With per-sample adapters, compute the offsets with the same names (Python's adapter_names=):
//
//   peft::AdapterNamesPerSample names(model, {"alora", "__base__"});
//   peft::AloraScope scope(model, peft::alora_offsets(model, input_ids, {"alora", "__base__"}));

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include <peft/export.h>
#include <peft/module_ref.h>

namespace peft {

/// Per row: how many trailing tokens the adapter acts on (from the start of the last occurrence of the invocation
/// sequence to the end of the row), or std::nullopt where the adapter acts on none (sequence absent, base model row,
/// not an aLoRA adapter). Python PEFT's `alora_offsets` list.
using AloraOffsets = std::vector<std::optional<int64_t>>;

/// Python PEFT's calculate_alora_offsets: for each row of `input_ids` (batch, tokens) — a 1-D tensor is one row, as
/// Python's generate treats it — the offset of the last occurrence of the invocation tokens of that row's adapter:
/// `adapter_names[i]` where given (rows past its end, like Python's, take the active adapter), else the model's
/// (first) active adapter. "__base__", adapters without `alora_invocation_tokens` and rows without the sequence give
/// std::nullopt; an unknown name warns "Adapter '<name>' not found in peft_config. Using base model for row <i>."
PEFT_API AloraOffsets alora_offsets(ConstModuleRef model, const at::Tensor& input_ids,
                                    const std::vector<std::string>& adapter_names = {});

/// While alive, the forwards of the calling thread through `model`'s LoRA layers apply each aLoRA adapter only to
/// the last offsets[i] tokens of row i (inputs (batch, tokens, features), or (batch, features) as one token per row),
/// as Python's layers do with the `alora_offsets` kwarg; plain LoRA adapters are unaffected. Scopes nest (the
/// innermost one holds) and are per thread, like AdapterNamesPerSample, with which they compose. A forward of an
/// aLoRA adapter outside any scope adds nothing (Python's alora_offsets=None) and warns once. The layers refuse a
/// batch whose size differs from the number of offsets.
class PEFT_API AloraScope {
 public:
  AloraScope(ModuleRef model, AloraOffsets offsets);
  /// The offsets of `input_ids` for the model's active adapter: AloraScope(model, alora_offsets(model, input_ids)).
  AloraScope(ModuleRef model, const at::Tensor& input_ids);
  ~AloraScope();
  AloraScope(const AloraScope&) = delete;
  AloraScope& operator=(const AloraScope&) = delete;

  const AloraOffsets& offsets() const;

  struct State;

 private:
  std::unique_ptr<State> state_;
  const State* previous_;
};

}  // namespace peft
