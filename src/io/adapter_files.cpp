// save_adapter / load_adapter: Python PEFT's adapter directories.

#include <peft/checkpoint.h>

#include <filesystem>

#include <c10/util/Exception.h>

#include <peft/config.h>
#include <peft/error.h>
#include <peft/inject.h>
#include <peft/lifecycle.h>
#include <peft/safetensors.h>

#include "core/inject_internal.h"
#include "core/json_config.h"
#include "core/method.h"
#include "core/model_adapters.h"
#include "core/python_regex.h"
#include "core/tensor_slots.h"
#include "io/atomic_file.h"

namespace peft {
namespace fs = std::filesystem;

namespace detail {

namespace {

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";

// save_pretrained puts "default" in the directory and every other adapter in a subdirectory of its name.
fs::path adapter_directory(const std::string& directory, const std::string& adapter_name) {
  const fs::path dir(directory);
  if (adapter_name != "default" && fs::exists(dir / adapter_name / kConfigFile)) return dir / adapter_name;
  if (fs::exists(dir / kConfigFile)) return dir;
  if (!fs::exists(dir)) throw FileFormatError("adapter directory '" + directory + "' does not exist");
  throw FileFormatError("no " + std::string(kConfigFile) + " in '" + directory + "'" +
                        (adapter_name == "default" ? std::string() : " or in its subdirectory '" + adapter_name + "'"));
}

// Moves or casts every tensor of the adapter (Python's _cast_adapter_dtype and device placement).
void place_adapter(torch::nn::Module& model, const std::string& adapter, const LoadAdapterOptions& options) {
  at::NoGradGuard no_grad;
  SharedReplacements replacements;  // a tensor shared by several layers stays one tensor
  for (const AdaptedLayer& layer : adapted_layers(model)) {
    for (const AdapterTensor& t : layer.adapters->adapter_tensors(*layer.module, adapter)) {
      replacements.replace(*t.owner, t.name, t.is_buffer, [&](const at::Tensor& tensor) {
        if (!tensor.is_floating_point() || tensor.device().is_meta()) return tensor;
        c10::ScalarType dtype = tensor.scalar_type();
        if (options.autocast_adapter_dtype && (dtype == at::kHalf || dtype == at::kBFloat16)) dtype = at::kFloat;
        if (options.dtype) dtype = *options.dtype;
        const c10::Device device = options.device ? *options.device : tensor.device();
        return tensor.to(device, dtype);  // `tensor` itself when both already fit
      });
    }
  }
}

// Python's load_peft_weights with key_mapping: each key loses its prefix, the first pattern that replaces something
// rewrites it, the prefix goes back on; a later key mapped onto an earlier one replaces its tensor, in its place.
StateDict remap_keys(const StateDict& weights, const std::vector<std::pair<std::string, std::string>>& key_mapping,
                     const std::string& file) {
  if (key_mapping.empty()) return weights;
  std::vector<PythonRegex> patterns;
  for (const auto& [pattern, replacement] : key_mapping) {
    patterns.emplace_back(pattern, PythonRegex::Anchor::Search, "key_mapping");
  }
  StateDict out;
  for (const auto& item : weights) {
    std::string prefix;
    for (const char* p : {"base_model.model.", "base_model."}) {
      if (item.key().rfind(p, 0) == 0) {
        prefix = p;
        break;
      }
    }
    if (prefix.empty()) {
      // Python raises "An error occurred while trying to load a PEFT state_dict with key_mapping. This should not happen."
      throw FileFormatError("key_mapping: the key '" + item.key() + "' of " + file + " starts with neither "
                            "'base_model.model.' nor 'base_model.', which Python PEFT's key_mapping requires (its keys are "
                            "mapped without that prefix); load the file without key_mapping");
    }
    std::string key = item.key().substr(prefix.size());
    for (size_t i = 0; i < patterns.size(); ++i) {
      auto [replaced, count] = patterns[i].subn(key_mapping[i].second, key);
      if (count > 0) {
        key = std::move(replaced);
        break;
      }
    }
    key = prefix + key;
    if (out.contains(key)) {
      out[key] = item.value();
    } else {
      out.insert(key, item.value());
    }
  }
  return out;
}

}  // namespace

}  // namespace detail

LoadResult load_adapter(ModuleRef model_ref, const std::string& directory, const std::string& adapter_name,
                        const LoadAdapterOptions& options) {
  using namespace detail;
  torch::nn::Module& model = model_ref.get();
  const fs::path dir = adapter_directory(directory, adapter_name);
  if (!fs::exists(dir / kWeightsFile)) {
    if (fs::exists(dir / "adapter_model.bin")) {
      throw FileFormatError((dir / "adapter_model.bin").string() +
                            " is a pickled PyTorch file, which peft-cpp does not read; save the adapter with "
                            "safe_serialization=True (the default) or convert it to adapter_model.safetensors");
    }
    throw FileFormatError("no " + std::string(kWeightsFile) + " in '" + dir.string() + "'");
  }
  std::shared_ptr<PeftConfig> config = load_config((dir / kConfigFile).string());
  ConfigFields::set_inference_mode(*config, !options.is_trainable);
  const StateDict weights =
      remap_keys(safetensors::load_file((dir / kWeightsFile).string()), options.key_mapping, (dir / kWeightsFile).string());

  // Injection checks the weights' shapes and dtypes against the adapter before attaching anything, so the
  // load below cannot fail on them. With ignore_mismatched_sizes, shapes that do not fit are left out by the load
  // instead, and anything else it refuses is undone below.
  inject_checked(*config, model, adapter_name, options.low_cpu_mem_usage, std::nullopt,
                 options.ignore_mismatched_sizes ? nullptr : &weights);
  try {
    SetStateDictOptions load_options;
    load_options.low_cpu_mem_usage = options.low_cpu_mem_usage;
    load_options.ignore_mismatched_sizes = options.ignore_mismatched_sizes;
    LoadResult result = set_peft_model_state_dict(model, weights, adapter_name, load_options);
    place_adapter(model, adapter_name, options);
    return result;
  } catch (...) {
    delete_adapter(model, adapter_name);  // back to the model as it was
    throw;
  }
}

void save_adapter(ConstModuleRef model_ref, const std::string& directory, const std::string& adapter_name,
                  const PeftStateDictOptions& options) {
  const torch::nn::Module& model = model_ref.get();
  std::shared_ptr<PeftConfig> config = detail::require_adapter(model, adapter_name)->clone();
  detail::ConfigFields::set_inference_mode(*config, true);
  const fs::path dir = adapter_name == "default" ? fs::path(directory) : fs::path(directory) / adapter_name;
  if (fs::exists(dir) && !fs::is_directory(dir)) {
    throw FileFormatError("Provided path (" + dir.string() + ") should be a directory, not a file");
  }
  StateDict prefixed;
  const detail::Method& method = detail::require_method(config->peft_type());
  StateDict state_dict = detail::adapter_state_dict(model, adapter_name, /*for_file=*/true);
  detail::add_embedding_layers(model, adapter_name, options, state_dict);
  for (const auto& item : state_dict) {
    // Model-level keys (an adapter's shared tensors, "base_model.vera_A") are written as they are, as Python does.
    const bool model_level = method.shared_container_of_key(item.key()) != nullptr;
    prefixed.insert(model_level ? item.key() : "base_model.model." + item.key(), item.value());
  }
  // Everything is serialised before anything is written.
  const std::string weights = safetensors::save_bytes(prefixed, {{"format", "pt"}});
  const std::string config_text = config->to_json_string();
  fs::create_directories(dir);
  detail::write_file_atomically((dir / detail::kWeightsFile).string(), weights);
  detail::write_file_atomically((dir / detail::kConfigFile).string(), config_text);
}

}  // namespace peft
