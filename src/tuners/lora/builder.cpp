// Creating a LoRA adapter on a layer (Python PEFT's LoraLayer.update_layer): modules, initialisation, DoRA.

#include <cmath>
#include <map>

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <peft/error.h>
#include <peft/tuners/lora/config.h>

#include "core/matching.h"
#include "core/method.h"
#include "core/tensor_slots.h"
#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/lora/bdlora.h"
#include "tuners/lora/arrow.h"
#include "tuners/lora/alora.h"
#include "tuners/lora/builder.h"
#include "tuners/lora/dora.h"
#include "tuners/lora/init.h"
#include "tuners/lora/layer.h"
#include "tuners/lora/param_wrapper.h"
#include "tuners/lora/weight_tying.h"
#include "tuners/trainable_tokens/wrapper.h"

namespace peft::detail::lora {
namespace {

template <class T>
struct TypeTag {
  using type = T;
};

std::shared_ptr<torch::nn::Module> make_conv(LayerKind kind, int64_t in, int64_t out, const torch::nn::Module& base,
                                             bool lora_B, int64_t groups, bool bias) {
  // lora_A repeats the base kernel, stride and padding; lora_B is a 1x1 conv (Python's _ConvNd.update_layer).
  auto build = [&](auto tag, const auto& base_conv) -> std::shared_ptr<torch::nn::Module> {
    using Impl = typename decltype(tag)::type;
    constexpr size_t D = std::tuple_size<std::decay_t<decltype(*base_conv.options.kernel_size())>>::value;
    torch::nn::ConvOptions<D> options(in, out, lora_B ? torch::ExpandingArray<D>(1) : base_conv.options.kernel_size());
    if (!lora_B) options.stride(base_conv.options.stride()).padding(base_conv.options.padding());
    options.groups(lora_B ? groups : 1).bias(bias);
    return std::make_shared<Impl>(options);
  };
  switch (kind) {
    case LayerKind::Conv1d:
      return build(TypeTag<torch::nn::Conv1dImpl>{}, dynamic_cast<const torch::nn::Conv1dImpl&>(base));
    case LayerKind::Conv2d:
      return build(TypeTag<torch::nn::Conv2dImpl>{}, dynamic_cast<const torch::nn::Conv2dImpl&>(base));
    default:
      return build(TypeTag<torch::nn::Conv3dImpl>{}, dynamic_cast<const torch::nn::Conv3dImpl&>(base));
  }
}

int64_t conv_groups(const BaseLayer& base) {
  switch (base.kind) {
    case LayerKind::Conv1d: return dynamic_cast<const torch::nn::Conv1dImpl&>(*base.module).options.groups();
    case LayerKind::Conv2d: return dynamic_cast<const torch::nn::Conv2dImpl&>(*base.module).options.groups();
    default: return dynamic_cast<const torch::nn::Conv3dImpl&>(*base.module).options.groups();
  }
}

// Moves a freshly built module's tensors to `options` (device/dtype, or meta without allocating).
void retarget(torch::nn::Module& module, const at::TensorOptions& options) {
  for (auto& param : parameters_of(module)) {
    const at::Tensor& t = param.value();
    if (!t.defined()) continue;
    at::Tensor moved = options.device().is_meta() ? at::empty(t.sizes(), options) : t.to(options);
    replace_tensor(module, param.key(), moved);
  }
}

class PendingLora final : public PendingChange {
 public:
  BaseLayer base;
  LoraLayer* existing = nullptr;
  std::shared_ptr<LoraLayer> fresh;  // when the layer has no adapters yet
  std::shared_ptr<LoraAdapter> adapter;
  std::shared_ptr<const PeftConfig> config;
  std::optional<at::Tensor> new_base_weight;
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> containers;  // of `fresh`

  std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_shapes() const override {
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    if (adapter->A) {
      out.emplace_back("lora_A.weight", parameters_of(*adapter->A).find("weight")->sizes().vec());
      out.emplace_back("lora_B.weight", parameters_of(*adapter->B).find("weight")->sizes().vec());
    } else {
      out.emplace_back("lora_embedding_A", adapter->embedding_A.sizes().vec());
      out.emplace_back("lora_embedding_B", adapter->embedding_B.sizes().vec());
    }
    if (adapter->magnitude) out.emplace_back("lora_magnitude_vector", adapter->magnitude_impl->magnitude().sizes().vec());
    return out;
  }

  void commit() override {
    if (new_base_weight) base.weight().set_data(*new_base_weight);
    // New modules start in the layer's mode, so dropout does not run in a model that is in eval mode.
    const bool training = base.module->is_training();
    for (auto* module : {adapter->dropout_module.get(), adapter->A.get(), adapter->B.get(), adapter->magnitude.get()}) {
      if (module) module->train(training);
    }
    if (existing) {
      existing->add(adapter, config);
      return;
    }
    attach_containers(*base.module, containers);
    fresh->add(adapter, config);
  }
};

class LoraBuilder final : public BuilderOf<LoraConfig> {
 public:
  LoraBuilder(const Method& method, LoraConfig& config)
      : BuilderOf(method, config), ranks_(config.rank_pattern(), "rank_pattern"),
        alphas_(config.alpha_pattern(), "alpha_pattern") {}

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override;

  // ensure_weight_tying with a saved embedding: the tied layers' copies use its copy's weight. Then
  // trainable_token_indices: trainable tokens on embedding layers, saved with this adapter.
  std::vector<AuxiliaryChange> prepare_auxiliary(const AuxiliaryRequest& request) override {
    TORCH_INTERNAL_ASSERT(awaiting_embedding_.empty(), "ensure_weight_tying: the embedding '", tying_.embedding,
                          "' was not adapted");
    std::vector<AuxiliaryChange> out = tied_copies(request, tying_);
    for (AuxiliaryChange& change : prepare_parameter_targets(request, config_)) out.push_back(std::move(change));
    if (!config_.trainable_token_indices()) return out;
    trainable_tokens::WrapperRequest wrappers;
    if (const auto* list = std::get_if<std::vector<int64_t>>(&*config_.trainable_token_indices())) {
      wrappers.layers["embed_tokens"] = *list;  // Python's default name of the input embedding
      wrappers.from_list = true;
    } else {
      wrappers.layers = std::get<std::map<std::string, std::vector<int64_t>>>(*config_.trainable_token_indices());
    }
    wrappers.ensure_weight_tying = config_.ensure_weight_tying();
    wrappers.modules_to_save = config_.modules_to_save();
    for (AuxiliaryChange& change : trainable_tokens::prepare_token_wrappers(request, wrappers)) {
      out.push_back(std::move(change));
    }
    return out;
  }

  // A MultiheadAttention's out_proj gets its own LoRA (Python's lora.MultiheadAttention wraps it in a lora.Linear):
  // its forward is never called, so the attention's forward adds its delta to out_proj's weight.
  std::vector<std::string> tied_layers(const std::vector<LayerRequest>& targets,
                                       const std::vector<std::pair<std::string, torch::nn::Module*>>& layers) override {
    std::vector<std::string> out;
    for (const LayerRequest& target : targets) {
      if (target.base.kind != LayerKind::MultiheadAttention) continue;
      out.push_back(target.module_name + ".out_proj");
      out_projs_[out.back()] = target.module_name;
    }
    // ensure_weight_tying: the input embedding and the layers sharing its weight come along.
    tying_ = plan_weight_tying(config_, targets, layers);
    out.insert(out.end(), tying_.extra_targets.begin(), tying_.extra_targets.end());
    return out;
  }

 private:
  PatternLookup<int64_t> ranks_;
  PatternLookup<double> alphas_;
  std::map<std::string, std::string> out_projs_;  // out_proj name -> its attention's name
  TyingPlan tying_;
  std::shared_ptr<const LoraAdapter> embedding_;  // the tied embedding's adapter, once prepared
  std::vector<std::pair<std::shared_ptr<LoraAdapter>, std::string>> awaiting_embedding_;  // tied layers prepared before it
};

// What Python's lora.MultiheadAttention refuses, and what it would silently get wrong.
void check_attention(const LoraConfig& config, const BaseLayer& base, const std::string& name) {
  const auto& attention = dynamic_cast<const torch::nn::MultiheadAttentionImpl&>(*base.module);
  if (!attention._qkv_same_embed_dim) {
    throw ConfigError("Only same embed for query/key/value is supported as of now for MultiheadAttention ('" + name +
                      "' has kdim/vdim different from embed_dim).");
  }
  if (config.use_dora()) {
    throw ConfigError("MultiheadAttention does not support DoRA (yet), please set use_dora to False ('" + name + "').");
  }
  if (config.lora_bias()) {
    throw ConfigError("lora_bias=True is not supported for MultiheadAttention ('" + name +
                      "'): Python PEFT merges only lora_B's weight into in_proj_weight, so its bias would be lost.");
  }
  const std::string& init = config.init_lora_weights().method();
  if (!init.empty() && init != "gaussian" && init != "orthogonal") {
    throw ConfigError("init_lora_weights='" + init + "' is not supported for MultiheadAttention ('" + name +
                      "'): it initialises from a layer's `weight`, which MultiheadAttention does not have.");
  }
}

std::unique_ptr<PendingChange> LoraBuilder::prepare(const LayerRequest& request) {
  const BaseLayer& base = request.base;
  const std::string& name = request.module_name;
  const auto out_proj = out_projs_.find(name);
  // An attention's out_proj takes the attention's rank and alpha, as in Python.
  const std::string& rank_name = out_proj == out_projs_.end() ? name : out_proj->second;
  const int64_t r = ranks_.lookup(rank_name, config_.r());
  const double alpha = alphas_.lookup(rank_name, config_.lora_alpha());
  if (base.kind == LayerKind::MultiheadAttention) check_attention(config_, base, name);
  if (r <= 0) throw ConfigError("`r` should be a positive integer value but the value passed is " + std::to_string(r));
  check_alora_layer(config_, base.kind, name);
  if (config_.arrow_config() && base.kind != LayerKind::Linear && base.kind != LayerKind::LinearLike) {
    throw ConfigError("Invalid or unsupported variant combination: ('arrow_config',) (Arrow routes Linear layers; '" +
                      name + "' is a " + layer_kind_name(base.kind) + ")");
  }
  const BdLoraRole block_diagonal = config_.use_bdlora() ? bdlora_role(config_, base, name, r) : BdLoraRole{};

  align_fan_in_fan_out(base, config_.fan_in_fan_out());
  const bool lora_bias = config_.lora_bias();
  if (lora_bias && base.kind == LayerKind::Embedding) {
    throw ConfigError("lora_bias=True is not supported for Embedding (layer '" + name + "').");
  }
  if (lora_bias && !base.bias().defined()) {
    TORCH_WARN("`lora_bias=True` was passed but the targeted layer '", name,
               "' has no bias. This means that merging LoRA weights won't be possible.");
  }
  int64_t groups = 1;
  if (base.is_conv()) {
    groups = conv_groups(base);
    if (r % groups != 0) {
      throw ConfigError("Targeting a " + std::string(layer_kind_name(base.kind)) + " with groups=" +
                        std::to_string(groups) + " and rank " + std::to_string(r) +
                        ". Currently, support is limited to conv layers where the rank is divisible by groups. "
                        "Either choose a different rank or do not target this specific layer ('" + name + "').");
    }
    if (groups > 1) TORCH_WARN("LoRA adapter added to ConvNd layer with groups > 1. Merging is not supported.");
  }

  auto adapter = std::make_shared<LoraAdapter>(request.adapter_name);
  adapter->r = r;
  adapter->alpha = alpha;
  adapter->use_rslora = config_.use_rslora();
  adapter->scaling = config_.use_rslora() ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
  adapter->use_dora = config_.use_dora();
  adapter->lora_bias = lora_bias;
  adapter->frozen_B = is_mica(config_.init_lora_weights());
  adapter->alora = is_alora(config_);
  if (config_.arrow_config()) adapter->arrow = std::make_shared<ArrowRouter>(*config_.arrow_config());
  adapter->dropout = config_.lora_dropout();
  if (adapter->dropout > 0) {
    auto dropout = std::make_shared<torch::nn::DropoutImpl>(torch::nn::DropoutOptions(adapter->dropout));
    adapter->dropout_impl = dropout.get();
    adapter->dropout_module = dropout;
  } else {
    adapter->dropout_module = std::make_shared<torch::nn::IdentityImpl>();
  }

  const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
  const bool meta = !materialised(options);
  at::Tensor A, B, B_bias;
  if (base.kind == LayerKind::Embedding) {
    adapter->embedding_A = at::empty({r, base.in_features}, options);
    adapter->embedding_B = at::empty({base.out_features, r}, options);
    A = adapter->embedding_A;
    B = adapter->embedding_B;
  } else if (base.is_conv()) {
    adapter->A = make_conv(base.kind, base.in_features, r, *base.module, false, 1, false);
    adapter->B = make_conv(base.kind, r, base.out_features, *base.module, true, groups, lora_bias);
    retarget(*adapter->A, options);
    retarget(*adapter->B, options);
    A = *parameters_of(*adapter->A).find("weight");
    B = *parameters_of(*adapter->B).find("weight");
    if (lora_bias) B_bias = *parameters_of(*adapter->B).find("bias");
  } else {
    auto lora_A = make_linear(base.in_features, r, false, options);
    auto lora_B = make_linear(r, base.out_features, lora_bias, options);
    A = lora_A->weight;
    B = lora_B->weight;
    B_bias = lora_B->bias;
    adapter->A = lora_A;
    adapter->B = lora_B;
    adapter->linear_A = lora_A.get();
    adapter->linear_B = lora_B.get();
  }

  auto pending = std::make_unique<PendingLora>();
  // Methods that move part of the base weight into the adapter run even for meta adapters (their
  // result is the base weight, which a checkpoint does not restore); plain inits are skipped on meta.
  const std::string& method = config_.init_lora_weights().method();
  const bool rewrites_base = rewrites_base_weight(method);
  if (rewrites_base && meta && base.kind != LayerKind::Embedding) {
    at::Tensor real_A = at::empty(A.sizes(), options.device(base.weight().device()));
    at::Tensor real_B = at::empty(B.sizes(), options.device(base.weight().device()));
    pending->new_base_weight = initialise(config_.init_lora_weights(), base, r, adapter->scaling, real_A, real_B, {});
  } else if (!meta) {
    pending->new_base_weight = initialise(config_.init_lora_weights(), base, r, adapter->scaling, A, B, B_bias);
  }
  // BD-LoRA replaces one factor after the plain init (Python's variant init runs last, drawing after it).
  if (block_diagonal.any()) make_block_diagonal(*adapter, block_diagonal, config_.use_bdlora()->nblocks(), base, options);
  // ensure_weight_tying: a tied layer takes the embedding's factors, now or (prepared first) once the embedding is.
  if (tying_.tied_targets.count(name)) {
    if (embedding_) {
      tie_to_embedding(*adapter, *embedding_, config_, name);
    } else {
      awaiting_embedding_.emplace_back(adapter, name);
    }
  }
  if (base.kind == LayerKind::Embedding && !tying_.tied_targets.empty() && name == tying_.embedding) {
    embedding_ = adapter;
    for (const auto& [tied, tied_name] : awaiting_embedding_) tie_to_embedding(*tied, *embedding_, config_, tied_name);
    awaiting_embedding_.clear();
  }

  if (adapter->use_dora) {
    const at::Tensor weight = pending->new_base_weight ? *pending->new_base_weight : base.weight();
    at::Tensor magnitude;
    if (meta) {
      const int64_t out = base.out_features;
      std::vector<int64_t> shape = base.is_conv() ? std::vector<int64_t>(weight.dim(), 1) : std::vector<int64_t>{out};
      if (base.is_conv()) shape[1] = out;
      magnitude = at::empty(shape, options);
    } else {
      at::NoGradGuard no_grad;
      const at::Tensor lora_weight = base.kind == LayerKind::Embedding ? at::matmul(B, A)
                                     : base.is_conv()                 ? dora_lora_weight(base.kind, A, B, weight.sizes())
                                                                      : at::matmul(B, A);
      magnitude = dora_weight_norm(base.kind, weight, lora_weight.to(weight.scalar_type()), adapter->scaling,
                                   base.fan_in_fan_out).to(options.dtype());
    }
    auto module = std::make_shared<DoraMagnitudeImpl>(magnitude);
    adapter->magnitude_impl = module.get();
    adapter->magnitude = module;
  }

  if (request.existing) {
    pending->existing = static_cast<LoraLayer*>(request.existing);  // injection checked it is LoRA's
  } else {
    check_container_names_free(*base.module, name, LoraLayer::containers());
    pending->fresh = LoraLayer::create(request, method_, pending->containers);
    if (out_proj != out_projs_.end()) pending->fresh->mark_attention_out_proj(out_proj->second);
  }
  pending->base = base;
  pending->adapter = std::move(adapter);
  pending->config = request.config;
  return pending;
}

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, LoraConfig& config) {
  return std::make_unique<LoraBuilder>(method, config);
}

}  // namespace peft::detail::lora
