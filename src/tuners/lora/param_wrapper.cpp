// LoRA on parameters (Python PEFT's lora.ParamWrapper): matching, the layer that keeps W + delta in the parameter
// while an adapter applies, and its preparation. See param_wrapper.h for why the delta lives in the parameter.

#include "tuners/lora/param_wrapper.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/matmul.h>
#include <c10/util/Exception.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/linear.h>

#include <peft/error.h>

#include "core/adapter_layer.h"
#include "core/matching.h"
#include "core/model_adapters.h"
#include "core/tensor_slots.h"
#include "tuners/lora/init.h"

namespace peft::detail::lora {
namespace {

const std::string kWrapper = "lora.ParamWrapper";
const std::string kNested = "base_layer";

// One targeted parameter. Python's shapes: a 2-D parameter is (out, in); a 3-D one is (experts, d1, d2) with
// lora_A reading d2 and lora_B giving d1 (Python's default for modules without `is_transposed`, which C++ modules
// do not have), its delta per expert e being B_e A_e.
struct ParamTarget {
  std::string name;  // on its module ("gate_up_proj")
  std::string key;   // in the model ("experts.gate_up_proj")
  int64_t experts = 1;
  int64_t in_features = 0;
  int64_t out_features = 0;
  bool three_d = false;
};

struct ParamAdapter final : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  std::vector<int64_t> r;             // per target, in matching order
  std::vector<double> base_scaling;   // alpha / r (or / sqrt(r)) per target
  double multiplier = 1.0;            // rescale_adapter_scale's factor
  double scaling(size_t i) const { return base_scaling[i] * multiplier; }
};

// The module under "base_layer" that holds a nested wrapper's containers (Python's inner ParamWrapper).
class NestedWrapperImpl : public torch::nn::Module {
 public:
  explicit NestedWrapperImpl(std::string parameter) : torch::nn::Module(kWrapper), parameter_(std::move(parameter)) {}
  void pretty_print(std::ostream& stream) const override {
    stream << kWrapper << "(parameter_name='" << parameter_ << "')";
  }

 private:
  std::string parameter_;
};

// lora_dropout / lora_A / lora_B of one wrapper (the outermost's lora_dropout is the layer's anchor). Plain pointers:
// the module (or a nested wrapper in it) owns them, and the anchor owns the layer, so shared ones would be a cycle.
struct Level {
  torch::nn::ModuleDictImpl* dropout = nullptr;
  torch::nn::ModuleDictImpl* A = nullptr;
  torch::nn::ModuleDictImpl* B = nullptr;
  std::string prefix;  // "" for the outermost, "base_layer." below it, ...
};

class ParamWrapperLayer final : public AdapterLayer {
 public:
  ParamWrapperLayer(const BaseLayer& base, std::string module_name, std::vector<ParamTarget> targets)
      : AdapterLayer(base, std::move(module_name)), targets_(std::move(targets)) {}

  // Builds the containers; levels_[i] belongs to targets_[i] (the last target is the outermost wrapper). Returns
  // what to attach to the module, anchor first.
  static std::shared_ptr<ParamWrapperLayer> create(
      const BaseLayer& base, const std::string& module_name, std::vector<ParamTarget> targets,
      std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>& attachments) {
    auto layer = std::make_shared<ParamWrapperLayer>(base, module_name, std::move(targets));
    const size_t n = layer->targets_.size();
    layer->levels_.resize(n);
    std::shared_ptr<torch::nn::Module> parent;  // the holder of the level above, while descending
    std::string prefix;
    for (size_t depth = 0; depth < n; ++depth) {
      Level& level = layer->levels_[n - 1 - depth];
      level.prefix = prefix;
      std::shared_ptr<torch::nn::ModuleDictImpl> dropout;
      if (depth == 0) {
        auto anchor = std::make_shared<AnchoredModuleDictImpl>();
        anchor->adapters = layer;
        dropout = anchor;
      } else {
        dropout = std::make_shared<torch::nn::ModuleDictImpl>();
      }
      auto A = std::make_shared<torch::nn::ModuleDictImpl>();
      auto B = std::make_shared<torch::nn::ModuleDictImpl>();
      level.dropout = dropout.get();
      level.A = A.get();
      level.B = B.get();
      if (depth == 0) {
        attachments = {{"lora_dropout", dropout}, {"lora_A", A}, {"lora_B", B}};
      } else {
        auto holder = std::make_shared<NestedWrapperImpl>(layer->targets_[n - 1 - depth].name);
        holder->register_module("lora_dropout", dropout);
        holder->register_module("lora_A", A);
        holder->register_module("lora_B", B);
        if (depth == 1) {
          attachments.emplace_back(kNested, holder);
        } else {
          parent->register_module(kNested, holder);
        }
        parent = holder;
      }
      prefix += kNested + ".";
    }
    return layer;
  }

  const std::vector<ParamTarget>& targets() const { return targets_; }

  std::string peft_type() const override { return "LORA"; }

  std::vector<std::string> container_names() const override {
    std::vector<std::string> names{"lora_dropout", "lora_A", "lora_B"};
    if (targets_.size() > 1) names.push_back(kNested);
    return names;
  }
  std::vector<std::string> checkpoint_container_names() const override { return {"lora_A", "lora_B"}; }

  // The parameters hold the active deltas: the module computes with them as it is.
  at::Tensor forward(torch::nn::Module&, const at::Tensor& input, BaseForward base_forward) override {
    return base_forward(input);
  }
  std::tuple<at::Tensor, at::Tensor> forward_attention(torch::nn::MultiheadAttentionImpl&, const AttentionCall& call,
                                                       AttentionForward original) override {
    return original(call);
  }

  std::vector<AdapterTensor> adapter_tensors(const torch::nn::Module&, const std::string& adapter) const override {
    std::vector<AdapterTensor> out;
    for (size_t depth = 0; depth < levels_.size(); ++depth) {
      const Level& level = levels_[levels_.size() - 1 - depth];
      for (const auto& [container, dict] : {std::pair<const char*, const torch::nn::ModuleDictImpl*>{"lora_A", level.A},
                                            {"lora_B", level.B}}) {
        const auto* entry = children_of(*dict).find(adapter);
        if (!entry) continue;
        const std::string name = std::string(container);
        // Never trained in peft-cpp: the delta is added to the parameter outside autograd.
        out.push_back({level.prefix + name + ".weight", level.prefix + name + "." + adapter + ".weight", entry->get(),
                       "weight", false, /*frozen=*/true});
      }
    }
    return out;
  }

  void add(std::shared_ptr<ParamAdapter> adapter, std::vector<std::shared_ptr<torch::nn::LinearImpl>> A,
           std::vector<std::shared_ptr<torch::nn::LinearImpl>> B, std::shared_ptr<const PeftConfig> config) {
    const bool training = base_layer().module->is_training();
    for (size_t i = 0; i < levels_.size(); ++i) {
      A[i]->train(training);
      B[i]->train(training);
      levels_[i].dropout->update({{adapter->name, std::make_shared<torch::nn::IdentityImpl>()}});
      levels_[i].A->update({{adapter->name, A[i]}});
      levels_[i].B->update({{adapter->name, B[i]}});
    }
    add_adapter(std::move(adapter), std::move(config));
  }

  void set_active_adapters(torch::nn::Module& base, const std::vector<std::string>& names, bool inference_mode) override {
    AdapterLayer::set_active_adapters(base, names, inference_mode);
    std::lock_guard<std::mutex> lock(mutex_);
    reconcile();
  }
  void set_disabled(torch::nn::Module& base, bool disabled) override {
    AdapterLayer::set_disabled(base, disabled);
    std::lock_guard<std::mutex> lock(mutex_);
    reconcile();
  }
  void tensors_written(torch::nn::Module&) override {
    std::lock_guard<std::mutex> lock(mutex_);
    while (!applied_.empty()) take_off(applied_.begin()->first);
    reconcile();
  }

  // The parameter without the deltas of adapters that apply but are not merged (merged ones are the base's now).
  at::Tensor base_value(const std::string& name, const at::Tensor& value) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t i = target_index(name);
    if (i == targets_.size()) return value;
    at::NoGradGuard no_grad;
    at::Tensor out = value;
    for (const auto& [adapter, deltas] : applied_) {
      if (std::find(merged_.begin(), merged_.end(), adapter) != merged_.end()) continue;
      out = out - deltas[i].to(value.device(), value.scalar_type());
    }
    return out;
  }
  // A new base value was written over W + deltas: the deltas that apply go on again.
  void base_tensor_written(const std::string& name) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t i = target_index(name);
    if (i == targets_.size()) return;
    at::NoGradGuard no_grad;
    const at::Tensor& p = parameter(i);
    for (const auto& [adapter, deltas] : applied_) {
      if (std::find(merged_.begin(), merged_.end(), adapter) == merged_.end()) p.add_(deltas[i].to(p.device(), p.scalar_type()));
    }
  }

  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module&, const std::vector<std::string>& names,
                                               bool safe_merge) override;
  void unmerge(torch::nn::Module&) override {
    std::lock_guard<std::mutex> lock(mutex_);
    merged_.clear();
    publish();
    reconcile();
  }
  // What stays is what is merged (merge_and_unload); everything else comes off.
  void prepare_unload(torch::nn::Module&) override {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::string> names;
    for (const auto& entry : applied_) names.push_back(entry.first);
    for (const auto& name : names) {
      if (std::find(merged_.begin(), merged_.end(), name) == merged_.end()) take_off(name);
    }
    applied_.clear();
  }
  void remove_adapter(torch::nn::Module&, const std::string& name) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (applied_.count(name)) take_off(name);
    }
    for (Level& level : levels_) {
      erase_from(*level.dropout, name);
      erase_from(*level.A, name);
      erase_from(*level.B, name);
    }
    remove_adapter_record(name);
  }

  // Python's ParamWrapper is a LoraLayer with one scaling per wrapper; a rank pattern can give the wrappers of one
  // module different ones. rescale_adapter_scale multiplies them all: the first stands for the set.
  std::optional<std::vector<std::pair<std::string, double>>> lora_scalings() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::pair<std::string, double>> out;
    for (const auto& entry : adapters_) out.emplace_back(entry.first, record_of(entry.first).scaling(0));
    return out;
  }
  void set_lora_scaling(const std::string& adapter, double scaling) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!records_.count(adapter)) return;
    auto updated = std::make_shared<ParamAdapter>(record_of(adapter));
    updated->multiplier = scaling / updated->base_scaling[0];
    const bool was_applied = applied_.count(adapter) > 0;
    if (was_applied) take_off(adapter);
    records_[adapter] = std::move(updated);
    publish();
    reconcile();
  }

  // delta of `adapter` for targets_[i], in the parameter's dtype and on its device.
  at::Tensor delta(const std::string& adapter, size_t i) const {
    const ParamAdapter& record = record_of(adapter);
    const ParamTarget& target = targets_[i];
    const at::Tensor& A = linear_weight(*levels_[i].A, adapter);
    const at::Tensor& B = linear_weight(*levels_[i].B, adapter);
    at::Tensor d;
    if (!target.three_d) {
      d = at::matmul(B, A) * record.scaling(i);
    } else {
      const int64_t r = record.r[i];
      // Python: lora_A (r*experts, in) as (experts, r, in), lora_B (out, r*experts) as (out, r, experts).
      const at::Tensor A3 = A.reshape({target.experts, r, target.in_features});
      const at::Tensor B3 = B.reshape({target.out_features, r, target.experts});
      d = at::einsum("ore,eri->eoi", {B3, A3}) * record.scaling(i);
    }
    const at::Tensor& p = parameter(i);
    return d.to(p.device(), p.scalar_type());
  }

  const at::Tensor& parameter(size_t i) const {
    const at::Tensor* p = parameters_of(*base_layer().module).find(targets_[i].name);
    TORCH_CHECK(p && p->defined(), "lora.ParamWrapper: '", targets_[i].key, "' is no longer a parameter of '",
                module_name(), "'");
    return *p;
  }

 private:
  size_t target_index(const std::string& name) const {
    for (size_t i = 0; i < targets_.size(); ++i) {
      if (targets_[i].name == name) return i;
    }
    return targets_.size();
  }
  static const at::Tensor& linear_weight(const torch::nn::ModuleDictImpl& dict, const std::string& adapter) {
    return *parameters_of(**children_of(dict).find(adapter)).find("weight");
  }
  const ParamAdapter& record_of(const std::string& adapter) const {
    return static_cast<const ParamAdapter&>(*records_.at(adapter));
  }
  bool loaded(const std::string& adapter) const {
    for (const Level& level : levels_) {
      if (linear_weight(*level.A, adapter).device().is_meta() || linear_weight(*level.B, adapter).device().is_meta()) {
        return false;
      }
    }
    return true;
  }

  // The adapters whose deltas the parameters should hold: the merged ones (Python's forward then runs the base alone),
  // else the active ones unless disabled. Adapters still on the meta device (low_cpu_mem_usage, not loaded) hold none.
  std::vector<std::string> wanted() const {
    std::vector<std::string> out;
    if (!merged_.empty()) {
      out = merged_;
    } else if (!disabled_) {
      for (const auto& name : active_) {
        if (records_.count(name)) out.push_back(name);
      }
    }
    out.erase(std::remove_if(out.begin(), out.end(), [&](const std::string& n) { return !loaded(n); }), out.end());
    return out;
  }
  // Called with mutex_ held.
  void reconcile() {
    const std::vector<std::string> want = wanted();
    std::vector<std::string> off;
    for (const auto& entry : applied_) {
      if (std::find(want.begin(), want.end(), entry.first) == want.end()) off.push_back(entry.first);
    }
    for (const auto& name : off) take_off(name);
    for (const auto& name : want) {
      if (!applied_.count(name)) put_on(name);
    }
  }
  void put_on(const std::string& adapter) {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> deltas;
    for (size_t i = 0; i < targets_.size(); ++i) deltas.push_back(delta(adapter, i));
    for (size_t i = 0; i < targets_.size(); ++i) parameter(i).add_(deltas[i]);
    applied_[adapter] = std::move(deltas);
  }
  // Removes exactly what put_on added (the adapter's tensors may have changed since).
  void take_off(const std::string& adapter) {
    at::NoGradGuard no_grad;
    auto it = applied_.find(adapter);
    for (size_t i = 0; i < targets_.size(); ++i) {
      const at::Tensor& p = parameter(i);
      p.sub_(it->second[i].to(p.device(), p.scalar_type()));
    }
    applied_.erase(it);
  }

  friend class PendingParamMerge;
  std::vector<ParamTarget> targets_;
  std::vector<Level> levels_;
  std::map<std::string, std::vector<at::Tensor>> applied_;  // guarded by mutex_
};

class PendingParamMerge final : public PendingChange {
 public:
  PendingParamMerge(ParamWrapperLayer& layer, std::vector<std::string> names) : layer_(layer), names_(std::move(names)) {}
  void commit() override {
    std::lock_guard<std::mutex> lock(layer_.mutex_);
    for (const auto& name : names_) layer_.merged_.push_back(name);
    layer_.publish();
    layer_.reconcile();
  }

 private:
  ParamWrapperLayer& layer_;
  std::vector<std::string> names_;
};

std::unique_ptr<PendingChange> ParamWrapperLayer::prepare_merge(torch::nn::Module&, const std::vector<std::string>& names,
                                                                bool safe_merge) {
  std::vector<std::string> to_merge;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& name : names) {
      if (!records_.count(name) || std::find(merged_.begin(), merged_.end(), name) != merged_.end()) continue;
      if (!loaded(name)) {
        throw MergeError("Cannot merge adapter '" + name + "' of '" + module_name() +
                         "': its tensors are still on the meta device (never loaded).");
      }
      if (safe_merge) {
        at::NoGradGuard no_grad;
        for (size_t i = 0; i < targets_.size(); ++i) {
          at::Tensor merged = parameter(i).clone();
          if (!applied_.count(name)) merged.add_(delta(name, i));
          if (!at::isfinite(merged).all().item<bool>()) {
            throw MergeError("NaNs detected in the merged weights. The adapter " + name + " seems to be broken");
          }
        }
      }
      to_merge.push_back(name);
    }
  }
  return std::make_unique<PendingParamMerge>(*this, std::move(to_merge));
}

// ---- preparation

class PendingParamAdapter final : public PendingChange {
 public:
  ParamWrapperLayer* existing = nullptr;
  std::shared_ptr<ParamWrapperLayer> fresh;
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> attachments;
  torch::nn::Module* module = nullptr;
  std::shared_ptr<ParamAdapter> adapter;
  std::vector<std::shared_ptr<torch::nn::LinearImpl>> A, B;
  std::vector<ParamTarget> targets;
  std::shared_ptr<const PeftConfig> config;

  std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_shapes() const override {
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    std::string prefix;
    for (size_t depth = 0; depth < targets.size(); ++depth) {
      const size_t i = targets.size() - 1 - depth;
      out.emplace_back(prefix + "lora_A.weight", A[i]->weight.sizes().vec());
      out.emplace_back(prefix + "lora_B.weight", B[i]->weight.sizes().vec());
      prefix += kNested + ".";
    }
    return out;
  }

  void commit() override {
    ParamWrapperLayer* layer = existing;
    if (!layer) {
      attach_containers(*module, attachments);
      layer = fresh.get();
    }
    layer->add(adapter, A, B, config);
  }
};

std::string python_list(const std::vector<std::string>& items) {
  std::vector<std::string> sorted = items;
  std::sort(sorted.begin(), sorted.end());
  std::string out = "[";
  for (size_t i = 0; i < sorted.size(); ++i) out += (i ? ", '" : "'") + sorted[i] + "'";
  return out + "]";
}

std::string python_list_as_given(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", '" : "'") + items[i] + "'";
  return out + "]";
}

// Python's checks in ParamWrapper.__init__ / update_layer, for a config that matched a parameter.
void check_config(const LoraConfig& config) {
  const std::string who = "lora.ParamWrapper";
  if (config.lora_dropout() != 0) throw ConfigError(who + " does not work with lora_dropout != 0.");
  if (config.fan_in_fan_out()) throw ConfigError(who + " does not work with fan_in_fan_out.");
  if (config.lora_bias()) throw ConfigError(who + " does not work with lora_bias=True.");
  if (config.use_dora()) throw ConfigError(who + " does not work with use_dora=True.");
  // Python's ParamWrapper has no variants: these would be silently dropped there and are refused here.
  if (config.use_bdlora() || config.arrow_config() || config.alora_invocation_tokens()) {
    throw ConfigError(who + " does not work with LoRA variants like DoRA (use_bdlora, arrow_config and "
                      "alora_invocation_tokens adapt modules; target_parameters adapts parameters).");
  }
  const InitLoraWeights& init = config.init_lora_weights();
  if (!init.is_bool() && init.method() != "gaussian") {
    throw ConfigError("init_lora_weights='" + init.method() +
                      "' is not supported with `target_parameters` in peft-cpp (true, false or \"gaussian\"): it "
                      "initialises from a layer's `weight`; initialise in Python PEFT and load the adapter.");
  }
}

// Python's rule: every adapter using target_parameters targets the same set (the wrappers' nesting encodes which
// parameter a tensor belongs to).
void check_same_set(const LoraConfig& config, const std::vector<AdaptedLayer>& layers) {
  std::vector<std::string> mine = *config.target_parameters();
  std::sort(mine.begin(), mine.end());
  mine.erase(std::unique(mine.begin(), mine.end()), mine.end());
  for (const AdaptedLayer& layer : layers) {
    if (!dynamic_cast<const ParamWrapperLayer*>(layer.adapters)) continue;
    for (const std::string& name : layer.adapters->adapter_names()) {
      const auto* other = dynamic_cast<const LoraConfig*>(layer.adapters->config_of(name).get());
      if (!other || !other->target_parameters() || other->target_parameters()->empty()) continue;
      std::vector<std::string> theirs = *other->target_parameters();
      std::sort(theirs.begin(), theirs.end());
      theirs.erase(std::unique(theirs.begin(), theirs.end()), theirs.end());
      if (theirs != mine) {
        throw ConfigError("When using multiple adapters with `target_parameters`, all adapters must target the same "
                          "set of parameters, but got " + python_list(mine) + " for the new adapter and " +
                          python_list(theirs) + " for adapter '" + name + "'.");
      }
    }
  }
}

// Python's rule: the name is the target or ends with "." + target.
bool names_parameter(const std::string& key, const std::string& target) {
  if (key == target) return true;
  return key.size() > target.size() && key.compare(key.size() - target.size(), target.size(), target) == 0 &&
         key[key.size() - target.size() - 1] == '.';
}

}  // namespace

std::vector<AuxiliaryChange> prepare_parameter_targets(const AuxiliaryRequest& request, const LoraConfig& config) {
  if (!config.target_parameters() || config.target_parameters()->empty()) return {};
  const std::vector<std::string>& wanted = *config.target_parameters();
  auto matches = [&](const std::string& key) {
    for (const std::string& target : wanted) {
      if (names_parameter(key, target)) return true;
    }
    return false;
  };
  // The root's own parameters (Python: the wrapper would become a child of the module it wraps).
  for (const auto& param : parameters_of(request.model)) {
    if (matches(param.key())) {
      throw ConfigError("Targeting an nn.Parameter on the top-level module is not supported (parameter '" +
                        param.key() + "'). ");
    }
  }
  // Per module, its matched parameters in registration order (Python's named_parameters(recurse=False)).
  std::vector<std::tuple<std::string, torch::nn::Module*, std::vector<std::string>>> owners;
  for (const auto& [name, module] : request.modules) {
    std::vector<std::string> params;
    for (const auto& param : parameters_of(*module)) {
      if (param.value().defined() && matches(name + "." + param.key())) params.push_back(param.key());
    }
    if (!params.empty()) owners.emplace_back(name, module, std::move(params));
  }

  const std::vector<AdaptedLayer> existing_layers = adapted_layers(request.model);
  if (!owners.empty()) {
    check_config(config);
    check_same_set(config, existing_layers);
  }
  const PatternLookup<int64_t> ranks(config.rank_pattern(), "rank_pattern");
  const PatternLookup<double> alphas(config.alpha_pattern(), "alpha_pattern");
  const bool training = !config.inference_mode();

  std::vector<AuxiliaryChange> out;
  for (auto& [name, module, params] : owners) {
    if (config.modules_to_save() && matches_modules_to_save(*config.modules_to_save(), name)) {
      throw ConfigError("target_parameters: '" + name + "' is also listed in `modules_to_save`; a module cannot be "
                        "both saved whole and carry LoRA on its parameters. Adjust one of the two.");
    }
    // Python's refusal of a layer that target_modules adapts, in this injection or an earlier one.
    AdapterLayer* existing = adapter_layer_of(*module);
    auto* wrapper = dynamic_cast<ParamWrapperLayer*>(existing);
    const torch::nn::Module* owner = module;  // (a structured binding cannot be captured in C++17)
    const bool targeted = std::any_of(request.targets.begin(), request.targets.end(),
                                      [owner](const LayerRequest& t) { return t.base.module == owner; });
    if (targeted || (existing && !wrapper)) {
      throw ConfigError("Trying to wrap an `nn.Parameter` of layer '" + name + "' of type " + short_repr(*module) +
                        ", which is not a valid target. Make sure that this layer is not also targeted with "
                        "`target_modules`. For some models, PEFT will do this automatically, try setting "
                        "`target_modules=[]` to prevent it.");
    }
    std::vector<ParamTarget> targets;
    for (const std::string& param_name : params) {
      const at::Tensor& p = *parameters_of(*module).find(param_name);
      ParamTarget t;
      t.name = param_name;
      t.key = name + "." + param_name;
      if (p.dim() == 2) {
        t.in_features = p.size(1);
        t.out_features = p.size(0);
      } else if (p.dim() == 3) {
        t.three_d = true;
        t.experts = p.size(0);
        t.in_features = p.size(2);
        t.out_features = p.size(1);
      } else {
        throw ConfigError("lora.ParamWrapper was initialized with " + std::to_string(p.dim()) +
                          " dimensional Parameter, but only 2d and 3d are supported ('" + t.key + "').");
      }
      if (!p.is_floating_point()) {
        throw ConfigError("target_parameters: '" + t.key + "' holds " + std::string(c10::toString(p.scalar_type())) +
                          " values; LoRA adapts floating-point parameters.");
      }
      targets.push_back(std::move(t));
    }
    if (wrapper) {
      std::vector<std::string> had;
      for (const ParamTarget& t : wrapper->targets()) had.push_back(t.name);
      if (had != params) {
        throw ConfigError("When using multiple adapters with `target_parameters`, all adapters must target the same "
                          "set of parameters: '" + name + "' has adapters on " + python_list_as_given(had) +
                          ", the new adapter matches " + python_list_as_given(params) + ".");
      }
    }

    auto adapter = std::make_shared<ParamAdapter>(request.adapter_name);
    auto pending = std::make_unique<PendingParamAdapter>();
    for (const ParamTarget& t : targets) {
      const int64_t r = ranks.lookup(t.key, config.r());
      const double alpha = alphas.lookup(t.key, config.lora_alpha());
      if (r <= 0) throw ConfigError("`r` should be a positive integer value but the value passed is " + std::to_string(r));
      adapter->r.push_back(r);
      adapter->base_scaling.push_back(config.use_rslora() ? alpha / std::sqrt(static_cast<double>(r))
                                                          : alpha / static_cast<double>(r));
      const at::Tensor& p = *parameters_of(*module).find(t.name);
      at::TensorOptions options = p.options().requires_grad(false);
      if (request.low_cpu_mem_usage) options = options.device(at::kMeta);
      auto A = make_linear(t.in_features, r * t.experts, false, options);
      auto B = make_linear(r * t.experts, t.out_features, false, options);
      if (!options.device().is_meta()) {
        BaseLayer shape{LayerKind::Parameter, module, t.in_features, t.out_features};
        initialise(config.init_lora_weights(), shape, r, adapter->base_scaling.back(), A->weight, B->weight, at::Tensor());
      }
      pending->A.push_back(A);
      pending->B.push_back(B);
    }
    if (wrapper) {
      pending->existing = wrapper;
    } else {
      check_container_names_free(*module, name, {"lora_dropout", "lora_A", "lora_B", kNested});
      BaseLayer base{LayerKind::Parameter, module, 0, 0};
      pending->fresh = ParamWrapperLayer::create(base, name, targets, pending->attachments);
    }
    pending->module = module;
    pending->adapter = std::move(adapter);
    pending->targets = std::move(targets);
    pending->config = request.config;
    AuxiliaryChange change;
    change.change = std::move(pending);
    change.module_name = name;
    change.checkpoint_name = name;
    change.module = module;
    change.kind = LayerKind::Parameter;
    out.push_back(std::move(change));
  }

  std::vector<std::string> matched;
  for (const auto& owner : owners) {
    for (const std::string& p : std::get<2>(owner)) matched.push_back(std::get<0>(owner) + "." + p);
  }
  if (!out.empty() && training) {
    TORCH_WARN("target_parameters: peft-cpp applies LoRA on ", python_list_as_given(matched),
               " by adding its delta to the parameter while the adapter is active (a C++ module reads its parameters "
               "directly), so these adapter tensors do not train here. Train such an adapter in Python PEFT and load "
               "it, or adapt a module with `target_modules`.");
  }
  const bool modules_set = config.target_modules().is_set();
  const bool modules_given = modules_set && !(config.target_modules().is_names() && config.target_modules().names().empty());
  if (request.targets.empty() && out.empty()) {
    if (!modules_given) {
      throw NoMatchingPeftModuleError(
          "No `target_modules` passed but also no `target_parameters` found. Please check the values for these "
          "arguments.");
    }
    std::ostringstream targets_text;
    targets_text << config.target_modules();
    throw NoMatchingPeftModuleError("Target modules " + targets_text.str() +
                                    " not found in the base model. Please check the target modules and try again.");
  }
  if (modules_given && request.targets.empty()) {
    std::ostringstream targets_text;
    targets_text << config.target_modules();
    TORCH_WARN("target_modules=", targets_text.str(), " were set but no module was matched.");
  } else if (out.empty()) {
    TORCH_WARN("target_parameters=", python_list_as_given(wanted), " were set but no parameter was matched.");
  }
  return out;
}

}  // namespace peft::detail::lora
