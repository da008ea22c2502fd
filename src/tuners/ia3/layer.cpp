// (IA)^3 (Python PEFT's tuners/ia3): y = l * W x (+ l * b), or for feedforward modules y = W (l * x) + b.

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <peft/error.h>
#include <peft/tuners/ia3/config.h>

#include "core/python_regex.h"
#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/ia3/layer.h"

namespace peft::detail::ia3 {
namespace {

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
};

class IA3Layer final : public DictAdapterLayer {
 public:
  IA3Layer(const LayerRequest& request, const Method& method, bool feedforward)
      : DictAdapterLayer(request, method, {{"ia3_l"}}), feedforward_(feedforward) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
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

class IA3Builder final : public BuilderOf<IA3Config> {
 public:
  IA3Builder(const Method& method, IA3Config& config) : BuilderOf(method, config) {
    if (config.feedforward_modules().is_regex()) {
      feedforward_regex_.emplace(config.feedforward_modules().pattern(), PythonRegex::Anchor::Full, "feedforward_modules");
    }
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
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
    return prepare_dict_adapter(
        request, [&] { return std::make_shared<IA3Layer>(request, method_, feedforward); }, std::move(adapter));
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

  std::optional<PythonRegex> feedforward_regex_;
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, IA3Config& config) {
  return std::make_unique<IA3Builder>(method, config);
}
}  // namespace peft::detail::ia3
