#pragma once

// Arrow routing over LoRA adapters (Python PEFT's create_arrow_model). See ArrowConfig in <peft/tuners/lora/config.h>.

#include <string>
#include <vector>

#include <peft/checkpoint.h>
#include <peft/export.h>
#include <peft/module_ref.h>
#include <peft/tuners/lora/config.h>

namespace peft {

/// Python PEFT's create_arrow_model, in place on `model`: loads the task adapter directories as "task_0",
/// "task_1", ... and, with arrow_config.use_gks, the general ones as "gks_0", "gks_1", ... (with `options`), checks
/// them as Python does (one rank, one set of target module names, the same weight shapes; Linear layers only), then
/// adds the router adapter "arrow_router" (LoraConfig(r, target_modules: those names, arrow_config: `arrow_config`
/// with the adapter names set)) and activates it. Forwards then route each token of each adapted Linear's input
/// through its top_k task adapters; GenKnowSub and the prototypes are computed at the first forward (and again for
/// task adapters added later). An arrow router cannot be merged. Throws ConfigError (no task directory; use_gks
/// without general directories; mismatching adapters), UnsupportedLayerError (an adapter on a non-Linear layer), or
/// what load_adapter throws; on any error the model is left as it was.
PEFT_API void create_arrow_model(ModuleRef model, const std::vector<std::string>& task_adapter_dirs,
                                 const std::vector<std::string>& general_adapter_dirs, ArrowConfig arrow_config,
                                 const LoadAdapterOptions& options = {});

}  // namespace peft
