#pragma once

// VB-LoRA's save_only_topk_weights checkpoints: instead of each layer's logits (..., num_vectors), the indices of
// the top k (`<key>_topk_indices`, in the smallest integer type that holds num_vectors) and the softmax weights
// of the first k-1 of them (`<key>_topk_weights`; the last is 1 minus their sum).

#include <cstdint>

#include <peft/state_dict.h>

namespace peft::detail::vblora {

/// The checkpoint with every `...vblora_logits_A/B` tensor replaced by its top-k indices and weights (Python's
/// VBLoRAModel._get_adapter_state_dict).
StateDict to_topk_checkpoint(const StateDict& state_dict, int64_t topk, int64_t num_vectors);

/// The inverse for loading (Python's _remap_adapter_state_dict_for_load): logits that are log(weight) at the
/// top-k indices and -inf elsewhere, which give the same top-k softmax. Throws StateDictError naming the key when
/// a pair is incomplete or does not fit.
StateDict from_topk_checkpoint(const StateDict& state_dict, int64_t num_vectors);

}  // namespace peft::detail::vblora
