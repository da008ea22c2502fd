#pragma once

// X-LoRA models: Python PEFT's XLoraModel for a C++ model. See XLoraConfig for the method.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <peft/checkpoint.h>
#include <peft/export.h>
#include <peft/module_ref.h>
#include <peft/state_dict.h>
#include <peft/tuners/xlora/config.h>

namespace peft {

/// The two model-specific passes an X-LoRA forward runs. Both take what XLoraModel::forward was given; its first two
/// dimensions are (batch, sequence) (token ids, or embeddings).
struct XLoraPasses {
  /// Runs the model and returns its last hidden state, (batch, sequence, hidden_size): what Python's X-LoRA reads as
  /// `model(input, output_hidden_states=True).hidden_states[-1]`. Called in the scaling pass, without gradients.
  std::function<at::Tensor(const at::Tensor& input)> last_hidden_state;
  /// Runs the model and returns its output: the pass with the predicted scalings.
  std::function<at::Tensor(const at::Tensor& input)> forward;
};

/// An X-LoRA model over `model` (Python PEFT's XLoraModel). Making it loads the config's LoRA adapters into `model`
/// as adapters "0", "1", ... (all active; frozen unless use_trainable_adapters), numbers the model's LoRA layers
/// (Linear, Embedding, Conv2d, in module order) and builds the classifier, registered as
/// `internal_xlora_classifier` (so this module's parameters are the classifier's: what trains). Anything that fails
/// leaves `model` as it was.
///
/// forward(input): the scaling pass (last_hidden_state with every expert scaled by scaling_pass_value, no
/// gradients), the classifier on its result, then `forward` with each LoRA layer mixing its experts per token:
/// y = base(x) + sum_i B_i A_i (x * s_i) * scaling_i * global_scaling_weight, s = the layer's scalings after top-k
/// and its softmax. Calls of the model outside forward() (or with adapter layers disabled here) run the LoRA
/// adapters as plain LoRA: every active expert at full scale, which is Python's forward without X-LoRA scalings.
/// Mixing ignores set_adapter and disable_adapters on the model (as Python's X-LoRA layers do), and a merged LoRA
/// layer gives its base output. `model` stays owned by its holders (and must outlive this object if it has none).
class PEFT_API XLoraModelImpl : public torch::nn::Module {
 public:
  XLoraModelImpl(ModuleRef model, XLoraConfig config, XLoraPasses passes,
                 const LoadAdapterOptions& lora_options = {});
  ~XLoraModelImpl() override;

  /// The scaling pass, the classifier, then the model's forward with the predicted scalings.
  at::Tensor forward(const at::Tensor& input);
  /// The scaling pass and the classifier alone: (batch, sequence, n_layers, n_experts). Also what
  /// latest_scalings() then returns.
  at::Tensor predict_scalings(const at::Tensor& input);

  const XLoraConfig& config() const;
  /// The experts (LoRA adapters) and the LoRA layers, in X-LoRA's numbering.
  int64_t n_experts() const;
  int64_t n_layers() const;
  const std::vector<std::string>& layer_names() const;
  /// The adapted model.
  torch::nn::Module& model() const;

  /// Python's get_latest_scalings: the scalings of the last forward or predict_scalings (undefined before).
  at::Tensor latest_scalings() const;
  /// Python's set_topk_lora (std::nullopt: every expert), set_global_scaling_weight, set_scaling_pass_value
  /// (std::nullopt: 1 / n_experts); each is reflected in config().
  void set_topk_lora(std::optional<int64_t> k);
  void set_global_scaling_weight(double weight);
  double global_scaling_weight() const;
  void set_scaling_pass_value(std::optional<double> value);
  /// Scalings log: every scalings tensor predicted while logging is on.
  void enable_scalings_logging();
  void disable_scalings_logging();
  void clear_scalings_log();
  std::vector<at::Tensor> scalings_log() const;
  /// The log by sequence length: positions in the log and the tensors (Python's get_bucketed_scalings_log).
  std::map<int64_t, std::pair<std::vector<int64_t>, std::vector<at::Tensor>>> bucketed_scalings_log() const;
  /// Python's disable_adapter_layers / enable_adapter_layers of the X-LoRA model: disabled, forward() runs the model
  /// without scalings (every expert at full scale).
  void disable_adapter_layers();
  void enable_adapter_layers();
  bool adapter_layers_disabled() const;

  /// The classifier's tensors under Python's keys: "base_model.internal_xlora_classifier.<name>".
  StateDict classifier_state_dict() const;
  /// Loads them (keys with or without "base_model."); every key, shape and dtype is checked before any is copied.
  void load_classifier_state_dict(const StateDict& state_dict, const std::string& source = "state dict");

  struct State;

 private:
  std::unique_ptr<State> state_;
};
TORCH_MODULE(XLoraModel);

/// Writes Python's X-LoRA directory: `directory/adapter_config.json` (the XLoraConfig) and
/// `directory/adapter_model.safetensors` (the whole classifier). The LoRA experts stay where the config's
/// `adapters` name them. Each file is written atomically.
PEFT_API void save_xlora(const XLoraModel& model, const std::string& directory);

/// Makes the X-LoRA model saved in `directory` (by save_xlora, or by Python's save_pretrained) over `model`: its
/// config, the LoRA experts from `adapters` (default: the config's paths, which Python resolves against the working
/// directory) and the classifier from adapter_model.safetensors. A file without the whole classifier is refused
/// (Python PEFT 0.20's save_pretrained drops the classifier layers whose index is an expert's name).
PEFT_API XLoraModel load_xlora(ModuleRef model, const std::string& directory, XLoraPasses passes,
                               std::optional<PatternMap<std::string>> adapters = std::nullopt,
                               const LoadAdapterOptions& lora_options = {});

}  // namespace peft
