// The TorchScript overloads of the public functions: the torch::nn function on the model's view, then the model
// brought in step with it (torchscript/attachment.h).

#include <peft/inject.h>
#include <peft/lifecycle.h>
#include <peft/torchscript.h>
#include <peft/training.h>

#include "torchscript/attachment.h"

namespace peft {
namespace {

using detail::torchscript::Attachment;

// Runs `change` on the model's view and syncs the model, also when `change` throws (it then changed nothing, and
// a view built for this call is dropped).
template <class Change>
auto change_view(torch::jit::Module& model, Change&& change) {
  c10::intrusive_ptr<Attachment> attachment = Attachment::find(model);
  if (!attachment) attachment = Attachment::build(model);
  using Result = decltype(change(*attachment->view()));
  try {
    if constexpr (std::is_void_v<Result>) {
      change(*attachment->view());
    } else {
      Result result = change(*attachment->view());
      attachment->sync(model);
      return result;
    }
  } catch (...) {
    attachment->sync(model);
    throw;
  }
  if constexpr (std::is_void_v<Result>) attachment->sync(model);
}

// The view for reading: the model's own, or one built for this call (a model without adapters).
std::shared_ptr<const torch::nn::Module> read_view(const torch::jit::Module& model) {
  if (auto attachment = Attachment::find(model)) return attachment->view();
  return Attachment::build(model)->view();
}

}  // namespace

void inject_adapter_in_model(const PeftConfig& config, torch::jit::Module& model, const std::string& adapter_name,
                             bool low_cpu_mem_usage, const std::optional<StateDict>& state_dict) {
  change_view(model, [&](torch::nn::Module& view) {
    inject_adapter_in_model(config, view, adapter_name, low_cpu_mem_usage, state_dict);
  });
}

LoadResult load_adapter(torch::jit::Module& model, const std::string& directory, const std::string& adapter_name,
                        const LoadAdapterOptions& options) {
  return change_view(model, [&](torch::nn::Module& view) { return load_adapter(view, directory, adapter_name, options); });
}

LoadResult set_peft_model_state_dict(torch::jit::Module& model, const StateDict& state_dict,
                                     const std::string& adapter_name, bool low_cpu_mem_usage) {
  return change_view(model, [&](torch::nn::Module& view) {
    return set_peft_model_state_dict(view, state_dict, adapter_name, low_cpu_mem_usage);
  });
}

void set_adapter(torch::jit::Module& model, const std::string& adapter_name, bool inference_mode) {
  change_view(model, [&](torch::nn::Module& view) { set_adapter(view, adapter_name, inference_mode); });
}

void set_adapter(torch::jit::Module& model, const std::vector<std::string>& adapter_names, bool inference_mode) {
  change_view(model, [&](torch::nn::Module& view) { set_adapter(view, adapter_names, inference_mode); });
}

void disable_adapters(torch::jit::Module& model) {
  change_view(model, [](torch::nn::Module& view) { disable_adapters(view); });
}

void enable_adapters(torch::jit::Module& model) {
  change_view(model, [](torch::nn::Module& view) { enable_adapters(view); });
}

void delete_adapter(torch::jit::Module& model, const std::string& adapter_name) {
  change_view(model, [&](torch::nn::Module& view) { delete_adapter(view, adapter_name); });
}

void merge_adapter(torch::jit::Module& model, const std::vector<std::string>& adapter_names, bool safe_merge) {
  change_view(model, [&](torch::nn::Module& view) { merge_adapter(view, adapter_names, safe_merge); });
}

void unmerge_adapter(torch::jit::Module& model) {
  change_view(model, [](torch::nn::Module& view) { unmerge_adapter(view); });
}

void merge_and_unload(torch::jit::Module& model, bool safe_merge, const std::vector<std::string>& adapter_names) {
  change_view(model, [&](torch::nn::Module& view) { merge_and_unload(view, safe_merge, adapter_names); });
}

void unload(torch::jit::Module& model) {
  change_view(model, [](torch::nn::Module& view) { unload(view); });
}

std::vector<std::string> adapter_names(const torch::jit::Module& model) { return adapter_names(*read_view(model)); }

std::vector<std::string> active_adapters(const torch::jit::Module& model) { return active_adapters(*read_view(model)); }

std::vector<std::string> targeted_module_names(const torch::jit::Module& model) {
  return targeted_module_names(*read_view(model));
}

StateDict get_peft_model_state_dict(const torch::jit::Module& model, const std::string& adapter_name,
                                    const PeftStateDictOptions& options) {
  return get_peft_model_state_dict(*read_view(model), adapter_name, options);
}

void save_adapter(const torch::jit::Module& model, const std::string& directory, const std::string& adapter_name,
                  const PeftStateDictOptions& options) {
  save_adapter(*read_view(model), directory, adapter_name, options);
}

std::vector<at::Tensor> trainable_tensors(const torch::jit::Module& model) { return trainable_tensors(*read_view(model)); }

std::shared_ptr<const torch::nn::Module> adapter_view(const torch::jit::Module& model) {
  if (auto attachment = Attachment::find(model)) return attachment->view();
  return nullptr;
}

}  // namespace peft
