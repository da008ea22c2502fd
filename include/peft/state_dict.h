#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/ordered_dict.h>

#include <peft/export.h>
#include <peft/module_ref.h>

namespace peft {

/// Tensors by name, in insertion order (what LibTorch's Module::named_parameters returns).
using StateDict = torch::OrderedDict<std::string, torch::Tensor>;

/// A checkpoint tensor left out by `ignore_mismatched_sizes` because its shape does not fit the model.
struct MismatchedKey {
  std::string key;                        // the model's key, as Python's warning names it (`lin.lora_A.default.weight`)
  std::vector<int64_t> checkpoint_shape;
  std::vector<int64_t> model_shape;
};

/// What set_peft_model_state_dict did not find.
struct LoadResult {
  /// Tensors of the adapter that the state dict did not provide (base-model tensors are never listed). With
  /// set_base_model_state_dict: the base tensors the state dict did not provide.
  std::vector<std::string> missing_keys;
  /// Keys that name nothing in the model.
  std::vector<std::string> unexpected_keys;
  /// With `ignore_mismatched_sizes`: the tensors that were not loaded because their shapes differ (Python only
  /// warns about them; the warning is given here too).
  std::vector<MismatchedKey> mismatched_keys;
};

/// Python's `save_embedding_layers`: false, true or "auto".
enum class SaveEmbeddingLayers { Off, On, Auto };

/// Options of get_peft_model_state_dict / save_adapter (Python's `save_embedding_layers` and what it asks of a
/// 🤗 transformers model).
struct PeftStateDictOptions {
  /// On: the base weights of the input and output embeddings go with the adapter (`embed_tokens.weight`, or
  /// `embed_tokens.base_layer.weight` where the embedding is adapted), as Python adds them. Auto (Python's
  /// default): On, with Python's warning, when target_modules names `embed_tokens` or `lm_head` (and the method
  /// is not trainable tokens); otherwise On only when `vocab_size` differs from the `vocab_size` of
  /// `<base_model_name_or_path>/config.json` (the embeddings were resized). A model without `input_embeddings`
  /// is not a 🤗 transformers model: On then saves nothing and gives Python's warning.
  SaveEmbeddingLayers save_embedding_layers = SaveEmbeddingLayers::Auto;
  /// The module names a transformers model's get_input_embeddings() / get_output_embeddings() return.
  std::optional<std::string> input_embeddings;
  std::optional<std::string> output_embeddings;
  /// The model's config.vocab_size (unset: the model has no config with vocabulary information).
  std::optional<int64_t> vocab_size;
};

/// Options of set_peft_model_state_dict (Python's keyword arguments).
struct SetStateDictOptions {
  /// Leave out the tensors whose shapes do not fit the model (listed in LoadResult::mismatched_keys, with
  /// Python's warning) instead of refusing the whole state dict.
  bool ignore_mismatched_sizes = false;
  /// Adopt the given tensors (see below).
  bool low_cpu_mem_usage = false;
};

/// The tensors of one adapter, keyed as Python PEFT's get_peft_model_state_dict keys them: the adapter
/// name removed (`linear.lora_A.weight`, `emb.lora_embedding_A`, DoRA's `lin.lora_magnitude_vector`),
/// biases per the config's `bias` (`lin.base_layer.bias` for adapted layers), and `modules_to_save`
/// copies under their layer's name (`lm_head.weight`). The tensors are the model's own (no copy).
/// With `options` (default: Python's save_embedding_layers="auto"), the embedding layers' base weights may be added
/// (PeftStateDictOptions).
PEFT_API StateDict get_peft_model_state_dict(ConstModuleRef model, const std::string& adapter_name = "default",
                                             const PeftStateDictOptions& options = {});

/// Loads an adapter's tensors into an injected model. Keys may carry Python's `base_model.model.` prefix.
/// Everything is checked before anything is written: a shape mismatch or an incompatible dtype throws
/// peft::StateDictError naming every offending key with both shapes, and the model is left untouched.
/// With `low_cpu_mem_usage`, the given tensors are adopted (no copy when device and dtype already fit),
/// replacing meta-device placeholders; otherwise they are copied into the existing parameters.
PEFT_API LoadResult set_peft_model_state_dict(ModuleRef model, const StateDict& state_dict,
                                              const std::string& adapter_name = "default", bool low_cpu_mem_usage = false);
/// The same with Python's `ignore_mismatched_sizes`: tensors whose shapes differ from the model's are left out
/// and reported instead of refused (Python's quirk kept: a model tensor of last dimension 1 and half the
/// checkpoint's elements, a packed 4-bit weight in Python, is not left out, so it is still refused).
PEFT_API LoadResult set_peft_model_state_dict(ModuleRef model, const StateDict& state_dict,
                                              const std::string& adapter_name, const SetStateDictOptions& options);

/// Python PEFT's get_base_model_state_dict: every parameter and buffer of the model except the adapters'
/// (every tensor of every adapter's containers, modules_to_save copies included), under the model's own names
/// (Python's keys without the `base_layer.` / `original_module.` infixes), in Python's state_dict order.
PEFT_API StateDict get_base_model_state_dict(ConstModuleRef model);

/// Python PEFT's set_base_model_state_dict: loads base tensors keyed as get_base_model_state_dict keys them.
/// `missing_keys` / `unexpected_keys` use those names. With `strict`, any missing or unexpected key throws
/// StateDictError (Python's "Missing key(s) in state_dict: [...]" text); shape or dtype mismatches always throw.
/// Everything is checked before anything is written.
PEFT_API LoadResult set_base_model_state_dict(ModuleRef model, const StateDict& state_dict, bool strict = true);

}  // namespace peft
