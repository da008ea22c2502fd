// XLoraModel: loads the LoRA experts, numbers the LoRA layers, and runs Python's two-pass X-LoRA forward.

#include <peft/tuners/xlora/model.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <set>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/full.h>
#include <c10/util/Exception.h>

#include <peft/error.h>
#include <peft/lifecycle.h>
#include <peft/safetensors.h>
#include <peft/tuners/lora/config.h>

#include "core/json_config.h"
#include "core/model_adapters.h"
#include "io/atomic_file.h"
#include "tuners/lora/layer.h"
#include "tuners/xlora/classifier.h"
#include "tuners/xlora/routing.h"

namespace peft {
namespace fs = std::filesystem;

namespace {

constexpr const char* kClassifier = "internal_xlora_classifier";
constexpr const char* kFilePrefix = "base_model.";

// Owns the model when something else does (so a passes' capture cannot outlive it), else borrows it.
std::shared_ptr<torch::nn::Module> hold(torch::nn::Module& model) {
  try {
    return model.shared_from_this();
  } catch (const std::bad_weak_ptr&) {
    return std::shared_ptr<torch::nn::Module>(&model, [](torch::nn::Module*) {});
  }
}

// Python's XLoraConfig.__post_init__ warnings and the checks peft-cpp adds before anything is loaded.
void check_config(XLoraConfig& config) {
  config.validate();
  if (!config.hidden_size()) {
    TORCH_WARN("No value was provided for `hidden_size`. This will be set to 4096 by default, please ensure that this "
               "is correct.");
    config.hidden_size(4096);
  }
  if (config.adapters().empty()) {
    throw ConfigError("XLoraConfig has no `adapters`: X-LoRA mixes LoRA adapters, name at least one (name -> "
                      "adapter directory).");
  }
  if (config.enable_softmax_topk() && !config.top_k_lora()) {
    TORCH_WARN("`enable_softmax_topk` enabled `top_k_lora` is not set");
  }
  if (config.enable_softmax_topk() && config.enable_softmax()) {
    TORCH_WARN("`enable_softmax_topk` and `enable_softmax` are both enabled. This will result in worse performance.");
  }
  for (std::size_t i = 0; i < config.adapters().size(); ++i) {
    if (config.adapters()[i].first != std::to_string(i)) {
      TORCH_WARN("X-LoRA loads its adapters as \"0\", \"1\", ... and mixes adapter i with column i of the scalings. "
                 "Python PEFT 0.20 activates them by the names in `adapters` instead, so with names other than \"0\", "
                 "\"1\", ... in order (here '", config.adapters()[i].first, "' at position ", i,
                 ") its X-LoRA mixes them differently or not at all.");
      break;
    }
  }
}

// The expert's LoRA config, checked before the model is touched.
void check_expert(const std::string& name, const std::string& directory) {
  const fs::path file = fs::path(directory) / "adapter_config.json";
  if (!fs::exists(file)) {
    throw FileFormatError("X-LoRA adapter '" + name + "': no adapter_config.json in '" + directory + "'");
  }
  const std::shared_ptr<PeftConfig> config = load_config(file.string());
  if (config->peft_type() != "LORA") {
    throw ConfigError("X-LoRA adapter '" + name + "' (" + directory + ") is a " + config->peft_type() +
                      " adapter; X-LoRA mixes LoRA adapters only.");
  }
  const auto& lora = dynamic_cast<const LoraConfig&>(*config);
  if (lora.target_parameters() && !lora.target_parameters()->empty()) {
    throw ConfigError("X-LoRA adapter '" + name + "' (" + directory + ") adapts parameters (target_parameters), "
                      "which X-LoRA cannot mix: its layers are LoRA modules.");
  }
}

}  // namespace

struct XLoraModelImpl::State {
  std::shared_ptr<torch::nn::Module> model;
  XLoraConfig config;
  XLoraPasses passes;
  std::shared_ptr<detail::xlora::ClassifierImpl> classifier;
  detail::xlora::Numbering numbering;
  std::vector<std::string> layer_names;
  c10::ScalarType dtype = at::kFloat;

  mutable std::mutex mutex;  // guards what forward records
  at::Tensor latest;
  std::vector<at::Tensor> log;
  bool logging = false;
  bool disabled = false;

  // A pass's mixing with the current settings (the scalings left to the caller).
  detail::xlora::Mixing mixing() const {
    std::lock_guard<std::mutex> lock(mutex);
    detail::xlora::Mixing out;
    out.numbering = &numbering;
    out.top_k = config.top_k_lora();
    out.softmax_top_k = config.enable_softmax_topk();
    out.global_scaling_weight = config.global_scaling_weight();
    return out;
  }
};

XLoraModelImpl::XLoraModelImpl(ModuleRef model_ref, XLoraConfig config, XLoraPasses passes,
                               const LoadAdapterOptions& lora_options)
    : state_(std::make_unique<State>()) {
  torch::nn::Module& model = model_ref.get();
  if (!passes.last_hidden_state || !passes.forward) {
    throw ConfigError("XLoraPasses needs both passes: last_hidden_state (the model's last hidden state, for the "
                      "classifier) and forward (the model's output).");
  }
  check_config(config);
  const PatternMap<std::string>& experts = config.adapters();
  const std::vector<std::string> existing = adapter_names(model);
  for (std::size_t i = 0; i < experts.size(); ++i) {
    const std::string name = std::to_string(i);
    if (std::find(existing.begin(), existing.end(), name) != existing.end()) {
      throw AdapterNameError("X-LoRA loads its adapters as \"0\", \"1\", ..., but the model already has an adapter "
                             "named '" + name + "'. Delete it first, or use a fresh model.");
    }
    check_expert(experts[i].first, experts[i].second);
  }

  // Everything from here on is undone if anything fails.
  std::vector<std::string> loaded;
  try {
    LoadAdapterOptions options = lora_options;
    options.is_trainable = config.use_trainable_adapters();
    for (std::size_t i = 0; i < experts.size(); ++i) {
      load_adapter(model, experts[i].second, std::to_string(i), options);
      loaded.push_back(std::to_string(i));
    }
    set_adapter(model, loaded, /*inference_mode=*/!config.use_trainable_adapters());

    // Python numbers every lora.Linear / lora.Embedding / lora.Conv2d of the model in module order.
    for (const detail::AdaptedLayer& layer : detail::adapted_layers(model)) {
      auto* lora = dynamic_cast<detail::lora::LoraLayer*>(layer.adapters);
      if (!lora || lora->peft_type() != "LORA") continue;
      const detail::LayerKind kind = lora->kind();
      if (kind != detail::LayerKind::Linear && kind != detail::LayerKind::LinearLike &&
          kind != detail::LayerKind::Embedding && kind != detail::LayerKind::Conv2d) {
        throw ConfigError("X-LoRA mixes LoRA on Linear, Embedding and Conv2d layers (as Python PEFT does), but '" +
                          layer.name + "' is a " + detail::layer_kind_name(kind) + " layer.");
      }
      for (const std::string& name : loaded) {
        const auto adapter = lora->adapter(name);
        if (adapter && adapter->use_dora) {
          throw ConfigError("X-LoRA currently does not support LoRA layers with DoRA (adapter '" +
                            experts[std::stoul(name)].first + "' on '" + layer.name + "').");
        }
      }
      state_->numbering.layer_numbers.emplace(lora, static_cast<int64_t>(state_->layer_names.size()));
      state_->layer_names.push_back(layer.name);
    }
    if (state_->layer_names.empty()) throw ConfigError("X-LoRA found no LoRA layer in the model.");
  } catch (...) {
    for (const std::string& name : loaded) delete_adapter(model, name);
    throw;
  }

  const std::vector<at::Tensor> parameters = model.parameters();
  const at::TensorOptions options =
      parameters.empty() ? at::TensorOptions(at::kFloat) : parameters.front().options().requires_grad(false);
  state_->dtype = options.dtype().toScalarType();
  state_->model = hold(model);
  state_->passes = std::move(passes);
  state_->numbering.experts = loaded;
  state_->config = std::move(config);
  state_->classifier = std::make_shared<detail::xlora::ClassifierImpl>(
      state_->config, static_cast<int64_t>(loaded.size()), static_cast<int64_t>(state_->layer_names.size()), options);
  register_module(kClassifier, state_->classifier);
}

XLoraModelImpl::~XLoraModelImpl() = default;

at::Tensor XLoraModelImpl::predict_scalings(const at::Tensor& input) {
  State& s = *state_;
  if (!input.defined() || input.dim() < 2) {
    throw Error("X-LoRA takes an input whose first two dimensions are (batch, sequence), got " +
                     (input.defined() ? std::to_string(input.dim()) + " dimension(s)" : std::string("none")) + ".");
  }
  const int64_t batch = input.size(0);
  const int64_t seq = input.size(1);
  detail::xlora::Mixing pass = s.mixing();
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    pass.scalings = at::full({batch, seq, s.classifier->n_layers(), s.classifier->n_experts()},
                             s.config.scaling_pass_value(), input.options().dtype(s.dtype));
  }
  at::Tensor hidden;
  {
    at::NoGradGuard no_grad;
    detail::xlora::MixingScope scope(pass);
    hidden = s.passes.last_hidden_state(input);
  }
  const int64_t hidden_size = *s.config.hidden_size();
  if (!hidden.defined() || hidden.dim() != 3 || hidden.size(0) != batch || hidden.size(1) != seq ||
      hidden.size(2) != hidden_size) {
    throw Error("XLoraPasses::last_hidden_state must return (batch, sequence, hidden_size) = (" +
                     std::to_string(batch) + ", " + std::to_string(seq) + ", " + std::to_string(hidden_size) +
                     "), got " + (hidden.defined() ? c10::str(hidden.sizes()) : std::string("an undefined tensor")) +
                     ".");
  }
  at::Tensor scalings = s.classifier->forward(hidden, batch, seq, s.config);
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.logging) s.log.push_back(scalings);
  s.latest = scalings;
  return scalings;
}

at::Tensor XLoraModelImpl::forward(const at::Tensor& input) {
  State& s = *state_;
  if (adapter_layers_disabled()) return s.passes.forward(input);
  at::Tensor scalings = predict_scalings(input);
  detail::xlora::Mixing mixing = s.mixing();
  mixing.scalings = std::move(scalings);
  detail::xlora::MixingScope scope(mixing);
  return s.passes.forward(input);
}

const XLoraConfig& XLoraModelImpl::config() const { return state_->config; }
int64_t XLoraModelImpl::n_experts() const { return state_->classifier->n_experts(); }
int64_t XLoraModelImpl::n_layers() const { return state_->classifier->n_layers(); }
const std::vector<std::string>& XLoraModelImpl::layer_names() const { return state_->layer_names; }
torch::nn::Module& XLoraModelImpl::model() const { return *state_->model; }

at::Tensor XLoraModelImpl::latest_scalings() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->latest;
}

void XLoraModelImpl::set_topk_lora(std::optional<int64_t> k) {
  if (k && (*k < 1 || *k > n_experts())) {
    throw ConfigError("`top_k_lora` must be between 1 and the number of adapters (" + std::to_string(n_experts()) +
                      "), got " + std::to_string(*k) + ".");
  }
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->config.top_k_lora(k);
}

void XLoraModelImpl::set_global_scaling_weight(double weight) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->config.global_scaling_weight(weight);
}

double XLoraModelImpl::global_scaling_weight() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->config.global_scaling_weight();
}

void XLoraModelImpl::set_scaling_pass_value(std::optional<double> value) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->config.scaling_pass_value(value ? *value : 1.0 / static_cast<double>(n_experts()));
}

void XLoraModelImpl::enable_scalings_logging() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->logging = true;
}

void XLoraModelImpl::disable_scalings_logging() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->logging = false;
}

void XLoraModelImpl::clear_scalings_log() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->log.clear();
}

std::vector<at::Tensor> XLoraModelImpl::scalings_log() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->log;
}

std::map<int64_t, std::pair<std::vector<int64_t>, std::vector<at::Tensor>>> XLoraModelImpl::bucketed_scalings_log()
    const {
  std::map<int64_t, std::pair<std::vector<int64_t>, std::vector<at::Tensor>>> buckets;
  const std::vector<at::Tensor> log = scalings_log();
  for (std::size_t i = 0; i < log.size(); ++i) {
    auto& bucket = buckets[log[i].size(1)];
    bucket.first.push_back(static_cast<int64_t>(i));
    bucket.second.push_back(log[i]);
  }
  return buckets;
}

void XLoraModelImpl::disable_adapter_layers() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->disabled = true;
}

void XLoraModelImpl::enable_adapter_layers() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->disabled = false;
}

bool XLoraModelImpl::adapter_layers_disabled() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->disabled;
}

StateDict XLoraModelImpl::classifier_state_dict() const {
  StateDict out;
  for (const auto& item : state_->classifier->named_parameters()) {
    out.insert(std::string(kFilePrefix) + kClassifier + "." + item.key(), item.value().detach());
  }
  return out;
}

void XLoraModelImpl::load_classifier_state_dict(const StateDict& state_dict, const std::string& source) {
  const std::string prefix = std::string(kClassifier) + ".";
  auto relative = [&](std::string key) -> std::optional<std::string> {
    if (key.rfind(kFilePrefix, 0) == 0) key = key.substr(std::string(kFilePrefix).size());
    if (key.rfind(prefix, 0) != 0) return std::nullopt;
    return key.substr(prefix.size());
  };
  torch::OrderedDict<std::string, at::Tensor> parameters = state_->classifier->named_parameters();
  std::map<std::string, at::Tensor> given;
  for (const auto& item : state_dict) {
    const std::optional<std::string> key = relative(item.key());
    if (!key || !parameters.contains(*key)) {
      throw StateDictError(source + ": unexpected key '" + item.key() + "' (an X-LoRA file holds the classifier: " +
                            "base_model.internal_xlora_classifier.<...>)");
    }
    const at::Tensor& target = parameters[*key];
    if (item.value().sizes() != target.sizes()) {
      throw StateDictError(source + ": '" + item.key() + "' has shape " + c10::str(item.value().sizes()) +
                       ", the classifier's is " + c10::str(target.sizes()) +
                       " (check hidden_size, xlora_depth, xlora_size, layerwise_scalings and the adapters)");
    }
    if (!item.value().is_floating_point()) {
      throw StateDictError(source + ": '" + item.key() + "' is not a floating-point tensor");
    }
    given[*key] = item.value();
  }
  std::vector<std::string> missing;
  for (const auto& item : parameters) {
    if (!given.count(item.key())) missing.push_back(std::string(kFilePrefix) + kClassifier + "." + item.key());
  }
  if (!missing.empty()) {
    std::string names;
    for (const std::string& name : missing) names += (names.empty() ? "" : ", ") + name;
    throw StateDictError(
        source + " lacks part of the X-LoRA classifier: " + names + ". Python PEFT 0.20's save_pretrained drops the "
        "classifier layers whose index is an adapter name (\"layers.0\" with adapters \"0\", \"1\", ...), so its "
        "files cannot restore the classifier; save it from Python with safetensors' save_file({k: v for k, v in "
        "model.state_dict().items() if \"internal_xlora_classifier\" in k}, ...) instead.");
  }
  at::NoGradGuard no_grad;
  for (auto& item : parameters) item.value().copy_(given[item.key()]);
}

void save_xlora(const XLoraModel& model, const std::string& directory) {
  const fs::path dir(directory);
  if (fs::exists(dir) && !fs::is_directory(dir)) {
    throw FileFormatError("Provided path (" + dir.string() + ") should be a directory, not a file");
  }
  std::shared_ptr<PeftConfig> config = model->config().clone();
  detail::ConfigFields::set_inference_mode(*config, true);
  const std::string weights = safetensors::save_bytes(model->classifier_state_dict(), {{"format", "pt"}});
  const std::string config_text = config->to_json_string();
  fs::create_directories(dir);
  detail::write_file_atomically((dir / "adapter_model.safetensors").string(), weights);
  detail::write_file_atomically((dir / "adapter_config.json").string(), config_text);
}

XLoraModel load_xlora(ModuleRef model, const std::string& directory, XLoraPasses passes,
                      std::optional<PatternMap<std::string>> adapters, const LoadAdapterOptions& lora_options) {
  const fs::path dir(directory);
  const fs::path config_file = dir / "adapter_config.json";
  const fs::path weights_file = dir / "adapter_model.safetensors";
  if (!fs::exists(config_file)) throw FileFormatError("no adapter_config.json in '" + directory + "'");
  if (!fs::exists(weights_file)) throw FileFormatError("no adapter_model.safetensors in '" + directory + "'");
  const std::shared_ptr<PeftConfig> loaded = load_config(config_file.string());
  const auto* xlora_config = dynamic_cast<const XLoraConfig*>(loaded.get());
  if (!xlora_config) {
    throw ConfigError(config_file.string() + " holds a " + loaded->peft_type() +
                      " adapter, not X-LoRA: load it with peft::load_adapter.");
  }
  XLoraConfig config = *xlora_config;
  if (adapters) config.adapters(std::move(*adapters));
  const StateDict weights = safetensors::load_file(weights_file.string());
  XLoraModel xlora(model, std::move(config), std::move(passes), lora_options);
  try {
    xlora->load_classifier_state_dict(weights, weights_file.string());
  } catch (...) {
    for (int64_t i = 0; i < xlora->n_experts(); ++i) delete_adapter(model, std::to_string(i));
    throw;
  }
  return xlora;
}

}  // namespace peft
