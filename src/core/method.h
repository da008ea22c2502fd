#pragma once

// An adapter method (LoRA, LoHa, HRA, ...) as the shared machinery sees it. A method declares itself once,
// in its own folder src/tuners/<method>/, as a MethodOf<ItsConfig> subclass registered with
// PEFT_REGISTER_METHOD: its checkpoint prefix, its config fields (which drive reading, writing and
// validating adapter_config.json), the layer kinds it adapts, and how it builds its adapter on a layer.
// Generic code (injection, config files, offline merge, inspect) asks the method, never names it.
//
// The method folders are found by CMake (every src/tuners/<folder>/ with a method.cpp); nothing else
// lists them.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <c10/util/Type.h>
#include <nlohmann/json.hpp>

#include <peft/config.h>
#include <peft/state_dict.h>

#include "core/adapter_layer.h"
#include "core/config_fields.h"
#include "core/layer_kinds.h"

namespace peft::detail {

/// What a method needs to adapt one layer.
struct LayerRequest {
  std::shared_ptr<const PeftConfig> config;  // the injection's config (targets expanded)
  std::string adapter_name;
  std::string module_name;                   // full dotted name in the model
  BaseLayer base;
  AdapterLayer* existing = nullptr;          // the adapters the layer already carries (any method), if any
  bool low_cpu_mem_usage = false;
};

/// What an injection adapts, for the changes it makes beside its targets (AdapterBuilder::prepare_auxiliary).
struct AuxiliaryRequest {
  torch::nn::Module& model;
  const std::vector<std::pair<std::string, torch::nn::Module*>>& modules;  // every module of the model, named
  const std::vector<LayerRequest>& targets;                              // the layers the injection adapts
  std::shared_ptr<const PeftConfig> config;
  std::string adapter_name;
  bool low_cpu_mem_usage = false;
  /// The modules_to_save copy this injection prepared for a layer (by name), or nullptr.
  std::function<std::shared_ptr<torch::nn::Module>(const std::string&)> saved_copy;
};

/// A change an injection makes to a layer it does not adapt with its method, for the same adapter (LoRA's
/// trainable_token_indices: trainable tokens on embedding layers). Committed with the rest.
struct AuxiliaryChange {
  std::unique_ptr<PendingChange> change;
  std::string module_name;      // the layer in the model
  std::string checkpoint_name;  // where checkpoints keep its tensors (checked against a given state dict)
  torch::nn::Module* module = nullptr;
  LayerKind kind = LayerKind::Linear;
};

/// Builds one injection's adapter, layer by layer, without changing the model; holds what is worth
/// computing once per injection (compiled rank patterns, ...).
class AdapterBuilder {
 public:
  virtual ~AdapterBuilder() = default;
  /// Sees every layer of the injection before the first prepare(): where layers share tensors (VeRA's
  /// projections sized by the largest layer, Lily's groups), the builder sizes and creates them here. It
  /// must not change the model either.
  virtual void plan(const std::vector<LayerRequest>& requests) {}
  /// Layers to adapt along with the targets although the config does not select them, by name: Python
  /// PEFT's tied weights (TrainableTokens adapts a head that shares a targeted embedding's weight). `layers`
  /// is every module of the model with its name. They are prepared like targets and seen by plan().
  virtual std::vector<std::string> tied_layers(const std::vector<LayerRequest>& targets,
                                               const std::vector<std::pair<std::string, torch::nn::Module*>>& layers) {
    return {};
  }
  /// The change that adds the adapter to one layer. Throws ConfigError for values that do not fit the layer
  /// (the layer kind itself was checked against Method::layer_kinds()).
  virtual std::unique_ptr<PendingChange> prepare(const LayerRequest& request) = 0;
  /// Changes to other layers the adapter brings along (Python PEFT's set_additional_trainable_modules, beyond
  /// modules_to_save), prepared after every target; throws, changing nothing, where they cannot be made.
  virtual std::vector<AuxiliaryChange> prepare_auxiliary(const AuxiliaryRequest& request) { return {}; }
};

/// A change of the model's structure an injection makes before it matches its targets (Python's _prepare_model:
/// LoRA's layer_replication). It is made at once, as matching must see it; the injection keeps it when it commits,
/// and destroying it un-kept undoes it, so a failed injection leaves the model as it was.
class ModelPreparation {
 public:
  explicit ModelPreparation(std::function<void()> undo) : undo_(std::move(undo)) {}
  ModelPreparation(const ModelPreparation&) = delete;
  ModelPreparation& operator=(const ModelPreparation&) = delete;
  ~ModelPreparation() {
    if (undo_) undo_();
  }
  void keep() noexcept { undo_ = nullptr; }

 private:
  std::function<void()> undo_;  // must not throw
};

class Method {
 public:
  virtual ~Method() = default;
  Method(const Method&) = delete;
  Method& operator=(const Method&) = delete;

  /// Python PEFT's peft_type ("LORA"), taken from the config class.
  const std::string& peft_type() const { return peft_type_; }
  /// Prefix of the method's checkpoint keys ("lora_"): a key `<module>.<prefix>...` belongs to the layer
  /// `<module>` (Python PEFT's PEFT_TYPE_TO_PREFIX_MAPPING).
  const std::string& prefix() const { return prefix_; }
  /// The config class's name ("LoraConfig"), for messages.
  const std::string& config_name() const { return config_name_; }

  /// The layer kinds the method adapts.
  const std::vector<LayerKind>& layer_kinds() const { return layer_kinds_; }
  bool supports(LayerKind kind) const;
  /// Python PEFT's "Target module ... is not supported. Currently, only the following modules are supported",
  /// plus the layer's name in the model.
  std::string unsupported_layer_message(const torch::nn::Module& module, const std::string& module_name) const;

  // ---- adapter_config.json (the fields every config shares are handled by the caller)
  virtual std::shared_ptr<PeftConfig> new_config() const = 0;
  /// Reads the method's fields into `config`.
  void read_config(JsonConfigReader& in, PeftConfig& config) const;
  /// Writes the method's fields, and drops the shared fields Python's config for this method lacks.
  void write_config(const PeftConfig& config, nlohmann::json& out) const;
  /// Checks each field and the method's combinations of them; throws ConfigError.
  void validate(const PeftConfig& config) const;
  /// The field named `name`, or nullptr.
  const ConfigField* field(const std::string& name) const;
  /// The config's `bias` field ("none", "all", "<method>_only"), "none" for methods without one.
  std::string bias_mode(const PeftConfig& config) const;

  // ---- injection
  /// Python's _prepare_adapter_config for a config that leaves target_modules unset (and no state dict names
  /// the layers): the targets the method picks itself (TrainableTokens: "embed_tokens"); unset for most.
  virtual TargetModules default_target_modules() const { return {}; }
  /// Why configs of this method cannot be injected layer by layer (X-LoRA: made with peft::XLoraModel), or "".
  virtual std::string injection_refusal() const { return {}; }
  /// Python's _prepare_model: changes the model's structure before targets are matched, or returns nullptr (most
  /// methods). Throws, changing nothing, where it cannot.
  virtual std::unique_ptr<ModelPreparation> prepare_model(const PeftConfig& config, torch::nn::Module& model) const {
    return nullptr;
  }
  /// Why a model carrying an adapter with this config cannot be merged (Python's _check_merge_allowed), or "".
  virtual std::string merge_refusal(const PeftConfig& config) const { return {}; }
  /// Starts one injection. `config` is the injection's own copy (targets expanded), which the builder may
  /// adjust as Python PEFT adjusts its config (e.g. fan_in_fan_out for the layer type found).
  virtual std::unique_ptr<AdapterBuilder> start_injection(PeftConfig& config) const = 0;
  /// Whether check_new_adapter needs the configs of the adapters already in the model (collecting them
  /// costs a walk over every adapter of every layer).
  virtual bool checks_other_adapters() const { return false; }
  /// Checks a new adapter's config against the adapters already in the model.
  virtual void check_new_adapter(const PeftConfig& config,
                                 const std::vector<std::shared_ptr<const PeftConfig>>& existing) const {}
  /// Whether the adapter trains tokens (TrainableTokens; LoRA with trainable_token_indices): Python then saves
  /// no targeted embedding whole under save_embedding_layers "auto".
  virtual bool uses_trainable_tokens(const PeftConfig& config) const { return false; }
  /// Whether the config adapts parameters themselves (LoRA's target_parameters): an injection may then match no
  /// module, and the builder's prepare_auxiliary adapts the parameters and reports what matched.
  virtual bool targets_parameters(const PeftConfig& config) const { return false; }
  /// Final touches to an adapter's checkpoint state dict (AdaLoRA keeps only the allocated ranks).
  virtual void adjust_checkpoint(const PeftConfig& config, StateDict& state_dict) const {}
  /// The inverse, before a checkpoint is matched to the adapter's tensors: VB-LoRA's save_only_topk_weights files
  /// hold top-k indices and weights where the model has logits. Also checks and warns as Python's load does. Keys
  /// may carry the "base_model.model." prefix. std::nullopt: load `state_dict` as it is.
  virtual std::optional<StateDict> checkpoint_for_load(const PeftConfig& config, const StateDict& state_dict) const {
    return std::nullopt;
  }

  // ---- tensors one adapter shares between all its layers
  /// A container whose tensor is one per adapter for the whole model (VeRA's vera_A / vera_B, VB-LoRA's
  /// vblora_vector_bank; Python PEFT keeps it on the tuner object and gives every layer a reference). Each adapted
  /// layer registers that same tensor in its container `name` under the adapter name, so forward, training, merge
  /// and delete_adapter need nothing special. Checkpoints hold it once, under the model-level key
  /// `base_model.<name>`, when `saved(config)` (VeRA: save_projection); otherwise it is neither saved, nor
  /// expected, nor loaded: the injection's value stands (VeRA regenerates it from projection_prng_key). Loading
  /// one of them gives every layer the same new tensor.
  ///
  /// With `layer_keys` (RandLoRA, whose Python tuner does not drop the layers' references from its state dict),
  /// checkpoints hold the tensor under every layer's own key "<layer>.<name>" as well:
  /// get_peft_model_state_dict gives those, save_adapter adds "base_model.<name>" (the tuner's entry, which
  /// Python's save_pretrained writes too), and loading accepts any of them without expecting the model-level one.
  ///
  /// With `group` (FRoD, whose tuner keeps one tensor per category of layers), the tensor is one per adapter and
  /// group: layers of one group share it, and its key is "base_model.<name>.<group(layer name)>".
  struct SharedContainer {
    std::string name;
    std::function<bool(const PeftConfig&)> saved;
    bool layer_keys = false;
    std::function<std::string(const std::string& module)> group;
    /// The method's checkpoints split the tensor by its first dimension: "base_model.<name>.<row>" (TinyLoRA).
    bool rows = false;
    /// "base_model.<name>", Python's key in get_peft_model_state_dict and adapter_model.safetensors.
    std::string checkpoint_key() const;
    /// The key of the tensor the layer `module` holds: checkpoint_key(), plus ".<group>" for a grouped container.
    std::string checkpoint_key(const std::string& module) const;
  };
  const std::vector<SharedContainer>& shared_containers() const { return shared_containers_; }
  /// The shared container named `name` (a container of the method's layers), or nullptr.
  const SharedContainer* shared_container(const std::string& name) const;
  /// The shared container whose checkpoint key is `key` ("base_model.vera_A", "base_model.frod_V.<group>"), or one
  /// row of it where the method's checkpoints split the tensor by its first dimension ("base_model.tinylora_v.0"), or
  /// nullptr.
  const SharedContainer* shared_container_of_key(const std::string& key) const;

  // ---- checkpoints without a model (offline merge, inspect)
  /// Containers (the key part after `<module>.`) that only an Embedding layer has, e.g. lora_embedding_A.
  const std::vector<std::string>& embedding_containers() const { return embedding_containers_; }
  /// Where a module's rank shows in its checkpoint tensors: (key relative to the module, dimension), first
  /// found wins. Empty for methods without a single rank.
  const std::vector<std::pair<std::string, int64_t>>& rank_keys() const { return rank_keys_; }
  /// The fields holding the rank and alpha and their per-module patterns ("" where the method has none).
  struct RankFields {
    std::string rank, rank_pattern, alpha, alpha_pattern;
  };
  const RankFields& rank_fields() const { return rank_fields_; }

 protected:
  Method(std::string peft_type, std::string config_name, std::string prefix);

  /// The layer kinds the method adapts (default: Linear).
  void layers(std::vector<LayerKind> kinds) { layer_kinds_ = std::move(kinds); }
  /// A field of Python's config peft-cpp does not use: accepted only when neutral, written as `python_default`.
  void unsupported(const std::string& name, const std::string& why, nlohmann::json python_default = nullptr);
  /// A field whose value does not change what peft-cpp computes; written as `python_default` (not at all when
  /// it is std::nullopt: Python does not write it either).
  void ignored(const std::string& name, std::optional<nlohmann::json> python_default = nlohmann::json());
  /// Shared fields (layers_to_transform, exclude_modules, ...) Python's config for this method lacks: not
  /// written, and refused when set.
  void without_common_fields(std::vector<std::string> names) { absent_common_fields_ = std::move(names); }
  void embedding_containers(std::vector<std::string> names) { embedding_containers_ = std::move(names); }
  void rank_keys(std::vector<std::pair<std::string, int64_t>> keys) { rank_keys_ = std::move(keys); }
  void rank_fields(RankFields fields) { rank_fields_ = std::move(fields); }
  /// Declares a shared container saved (always) as one key per row of its first dimension (SharedContainer::rows).
  void shares_by_rows(std::string name);
  /// Declares a shared container (see SharedContainer); `saved` defaults to always.
  void shares(std::string name, std::function<bool(const PeftConfig&)> saved = nullptr, bool layer_keys = false,
              std::function<std::string(const std::string&)> group = nullptr);
  /// Checks before any field is read (OFT refuses files from before its format change).
  virtual void check_file(const JsonConfigReader& in) const {}
  /// Checks of combinations of fields (each field's own checks run first).
  virtual void check_combination(const PeftConfig& config) const {}

  std::vector<std::unique_ptr<ConfigField>> fields_;

 private:
  std::string peft_type_;
  std::string config_name_;
  std::string prefix_;
  std::vector<LayerKind> layer_kinds_{LayerKind::Linear};
  std::vector<std::string> absent_common_fields_;
  std::vector<std::string> embedding_containers_;
  std::vector<std::pair<std::string, int64_t>> rank_keys_;
  RankFields rank_fields_;
  std::vector<SharedContainer> shared_containers_;
};

/// The base of each method's registration: ties the method to its config class.
template <class Config>
class MethodOf : public Method {
 protected:
  explicit MethodOf(std::string prefix) : Method(Config().peft_type(), class_name(), std::move(prefix)) {}

  /// Declares a TORCH_ARG field of the config: field(PEFT_FIELD(r)).check(positive()).
  template <class Access>
  auto& field(const char* name, Access access) {
    using T = std::decay_t<decltype(access(std::declval<Config&>()))>;
    auto entry = std::make_unique<Field<Config, T, Access>>(name, std::move(access));
    auto& ref = *entry;
    fields_.push_back(std::move(entry));
    return ref;
  }
  /// A shared container saved when `saved(config)` holds: shares("vera_A", [](const VeraConfig& c) { ... }).
  void shares(std::string name, std::function<bool(const Config&)> saved, bool layer_keys = false,
              std::function<std::string(const std::string&)> group = nullptr) {
    Method::shares(std::move(name), [saved](const PeftConfig& c) { return saved(static_cast<const Config&>(c)); },
                   layer_keys, std::move(group));
  }
  using Method::shares;

  /// A field with its own JSON form.
  void custom(const char* name, typename CustomField<Config>::Read read, typename CustomField<Config>::Write write) {
    fields_.push_back(std::make_unique<CustomField<Config>>(name, std::move(read), std::move(write)));
  }

  /// Checks of combinations of fields, on the typed config.
  virtual void check(const Config& config) const {}
  /// Starts one injection on the typed config.
  virtual std::unique_ptr<AdapterBuilder> start(Config& config) const = 0;

 private:
  static std::string class_name() {
    const std::string full = c10::demangle_type<Config>();
    const auto colon = full.rfind("::");
    return colon == std::string::npos ? full : full.substr(colon + 2);
  }
  std::shared_ptr<PeftConfig> new_config() const final { return std::make_shared<Config>(); }
  void check_combination(const PeftConfig& config) const final { check(static_cast<const Config&>(config)); }
  std::unique_ptr<AdapterBuilder> start_injection(PeftConfig& config) const final {
    return start(static_cast<Config&>(config));
  }
};

/// The method for a peft_type ("LORA"), or nullptr.
const Method* find_method(const std::string& peft_type);
/// The same, or ConfigError naming the supported ones.
const Method& require_method(const std::string& peft_type);
/// Every registered method, ordered by peft_type.
const std::vector<const Method*>& all_methods();

}  // namespace peft::detail

/// Registers a method from its folder: PEFT_REGISTER_METHOD(hra, Hra) in src/tuners/hra/method.cpp. The
/// first argument is the folder's name.
#define PEFT_REGISTER_METHOD(folder, MethodClass)        \
  namespace peft::detail::methods {                      \
  const Method& folder() {                               \
    static const MethodClass method;                     \
    return method;                                       \
  }                                                      \
  }
