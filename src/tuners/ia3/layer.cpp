// (IA)^3 (Python PEFT's tuners/ia3): y = l * W x (+ l * b), or for feedforward modules y = W (l * x) + b.

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <peft/error.h>
#include <peft/tuners/ia3/config.h>

#include "core/json_config.h"
#include "core/python_regex.h"
#include "tuners/common/pending_adapter.h"

namespace peft::detail::ia3 {
namespace {

const std::vector<DictAdapterLayer::Container>& containers() {
  static const std::vector<DictAdapterLayer::Container> c{{"ia3_l"}};
  return c;
}

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
};

class IA3Layer final : public DictAdapterLayer {
 public:
  IA3Layer(const BaseLayer& base, bool feedforward) : DictAdapterLayer(base, "IA3", containers()), feedforward_(feedforward) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x,
                            const std::vector<std::shared_ptr<const AdapterRecord>>& active,
                            BaseForward base_forward) override {
    const c10::ScalarType previous = x.scalar_type();
    at::Tensor scaling;
    for (const auto& record : active) {
      // Linear layers use the flattened vector (broadcast over the last dim); convs keep (1, C, 1, ...).
      const at::Tensor& l = param(0, record->name);
      const at::Tensor v = base_layer().is_conv() ? l : l.flatten();
      scaling = scaling.defined() ? scaling * v : v;
    }
    at::Tensor result;
    if (feedforward_) {
      const at::Tensor weight = base_layer().weight();
      result = base_forward((x.to(scaling.scalar_type()) * scaling).to(weight.scalar_type()));
    } else {
      const at::Tensor out = base_forward(x);
      result = base_layer().is_conv() ? out.to(scaling.scalar_type()) * scaling : (out * scaling).to(out.scalar_type());
    }
    return result.scalar_type() == previous ? result : result.to(previous);
  }

  // W scaled row-wise (outputs) or column-wise (feedforward: inputs); the bias follows the outputs.
  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    const at::Tensor& l = param(0, record.name);
    const at::Tensor factor = weight_factor(l);
    at::Tensor new_bias = bias;
    if (!feedforward_ && bias.defined()) new_bias = (bias * l.reshape(bias.sizes())).to(bias.scalar_type());
    return {(weight * factor).to(weight.scalar_type()), new_bias};
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& record) const override {
    TORCH_WARN("Unmerge result can be inaccurate for (IA)^3.");
    const at::Tensor& l = param(0, record.name);
    at::Tensor new_bias = bias;
    if (!feedforward_ && bias.defined()) new_bias = (bias / (l.reshape(bias.sizes()) + 1e-8)).to(bias.scalar_type());
    return {(weight / (weight_factor(l) + 1e-8)).to(weight.scalar_type()), new_bias};
  }

  bool merge_touches_bias() const override { return true; }

 private:
  at::Tensor weight_factor(const at::Tensor& l) const {
    if (base_layer().is_conv()) return feedforward_ ? l : l.transpose(0, 1);
    return base_layer().fan_in_fan_out ? l.t() : l;
  }

  bool feedforward_;
};

class IA3Planner final : public LayerPlanner {
 public:
  explicit IA3Planner(IA3Config& config) : config_(config) {
    if (config.feedforward_modules().is_regex()) {
      feedforward_regex_.emplace(config.feedforward_modules().pattern(), PythonRegex::Anchor::Full, "feedforward_modules");
    }
  }

  std::unique_ptr<PendingChange> prepare_layer(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    const bool supported = base.kind == LayerKind::Linear || base.kind == LayerKind::LinearLike ||
                           base.kind == LayerKind::Conv2d || base.kind == LayerKind::Conv3d;
    if (!supported) {
      throw UnsupportedLayerError("Target module " + short_repr(*base.module) +
                                  " is not supported. Currently, only `torch::nn::Linear`, `torch::nn::Conv2d`, "
                                  "`torch::nn::Conv3d` and peft::LinearLike layers (transformers' Conv1D) are supported.");
    }
    if (base.kind == LayerKind::Linear && config_.fan_in_fan_out()) {
      TORCH_WARN("fan_in_fan_out is set to True but the target module is `torch::nn::Linear`. Setting fan_in_fan_out to False.");
      config_.fan_in_fan_out(false);
    } else if (base.kind == LayerKind::LinearLike && base.fan_in_fan_out && !config_.fan_in_fan_out()) {
      TORCH_WARN("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
      config_.fan_in_fan_out(true);
    }
    const bool feedforward = is_feedforward(request.module_name);
    const int64_t features = feedforward ? base.in_features : base.out_features;
    std::vector<int64_t> shape;
    if (base.is_conv()) {
      shape.assign(base.weight().dim(), 1);
      shape[1] = features;
    } else {
      shape = feedforward ? std::vector<int64_t>{1, features} : std::vector<int64_t>{features, 1};
    }
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor l = at::empty(shape, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      if (config_.init_ia3_weights()) {
        l.fill_(1.0);
      } else {
        l.normal_();
      }
    }
    DictAdapterLayer::NewAdapter adapter;
    adapter.record = std::make_shared<Record>(request.adapter_name);
    adapter.tensors.emplace_back(0, l);
    return prepare_dict_adapter(request, "IA3", containers(),
                                [base, feedforward] { return std::make_shared<IA3Layer>(base, feedforward); },
                                std::move(adapter));
  }

 private:
  // Python's _check_target_module_feedforward: a regex must match entirely, a name is a plain suffix.
  bool is_feedforward(const std::string& key) const {
    if (feedforward_regex_) return feedforward_regex_->matches(key);
    if (!config_.feedforward_modules().is_names()) return false;
    for (const auto& name : config_.feedforward_modules().names()) {
      if (key.size() >= name.size() && key.compare(key.size() - name.size(), name.size(), name) == 0) return true;
    }
    return false;
  }

  IA3Config& config_;
  std::optional<PythonRegex> feedforward_regex_;
};

class IA3Tuner final : public Tuner {
 public:
  const char* peft_type() const override { return "IA3"; }
  const char* prefix() const override { return "ia3_"; }

  std::shared_ptr<PeftConfig> read_config(JsonConfigReader& in) const override {
    auto config = std::make_shared<IA3Config>();
    config->feedforward_modules(in.get_targets("feedforward_modules"));
    config->fan_in_fan_out(in.get_bool("fan_in_fan_out", false));
    config->init_ia3_weights(in.get_bool("init_ia3_weights", true));
    return config;
  }

  void write_config(const PeftConfig& base, nlohmann::json& out) const override {
    const auto& c = static_cast<const IA3Config&>(base);
    out["feedforward_modules"] = targets_to_json(c.feedforward_modules());
    out["fan_in_fan_out"] = c.fan_in_fan_out();
    out["init_ia3_weights"] = c.init_ia3_weights();
    // Python's IA3Config has no layer selection fields.
    out.erase("layers_to_transform");
    out.erase("layers_pattern");
  }

  std::unique_ptr<LayerPlanner> make_planner(PeftConfig& config) const override {
    return std::make_unique<IA3Planner>(static_cast<IA3Config&>(config));
  }
};

}  // namespace

const Tuner& ia3_tuner() {
  static const IA3Tuner tuner;
  return tuner;
}

}  // namespace peft::detail::ia3
