// OSF (Python PEFT's tuners/osf): at injection the layer's weight W (out, in) is split by its SVD,
// W = U S V^T, into the top k singular directions (U_high (out, k), S_high (k), V_high (k, in): frozen
// buffers _osf_U_high / _osf_S_high / _osf_V_high, left out of checkpoints as Python's non-persistent BufferDict
// is) and the remaining ones (U_low, S_low, V_low: the trained parameters in osf_svd_params.<adapter>). The layer
// computes y = x W'^T + b with W' = U_high diag(S_high) V_high + U_low diag(S_low) V_low of the first active
// adapter. Gradients of U_low and V_low lose their components along U_high / V_high (Python's gradient hooks;
// here part of the forward's graph, so they also hold for tensors a low_cpu_mem_usage load put in place).
// Merging writes W' (of the last merged adapter) into the weight; the layer keeps the weight from before the
// first merge, and unmerging restores it (Python's OSF cannot unmerge).

#include <algorithm>

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_svd.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>

#include <peft/error.h>
#include <peft/tuners/osf/config.h>

#include "core/python_regex.h"
#include "tuners/common/merge_from_original.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/osf/layer.h"

namespace peft::detail::osf {
namespace {

enum Containers : size_t { kSvd = 0, kUHigh = 1, kSHigh = 2, kVHigh = 3 };

std::vector<DictAdapterLayer::Container> containers() {
  DictAdapterLayer::Container svd{"osf_svd_params", /*holds_modules=*/true};
  auto frozen = [](const char* name) {
    DictAdapterLayer::Container c{name};
    c.holds_buffers = true;
    c.in_checkpoint = false;  // Python's BufferDict is not persistent
    return c;
  };
  return {svd, frozen("_osf_U_high"), frozen("_osf_S_high"), frozen("_osf_V_high")};
}

/// The identity, whose backward removes the gradient's part in the frozen subspace: for U_low (columns)
/// g - U_high (U_high^T g), for V_low (rows) g - (g V_high^T) V_high.
struct ProjectGradient : torch::autograd::Function<ProjectGradient> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& low, const at::Tensor& high,
                            bool columns) {
    ctx->save_for_backward({high});
    ctx->saved_data["columns"] = columns;
    return low;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor high = ctx->get_saved_variables()[0];
    const at::Tensor& grad = grads[0];
    at::Tensor projected;
    if (!grad.defined()) {
      projected = grad;
    } else if (ctx->saved_data["columns"].toBool()) {
      projected = grad - at::mm(high, at::mm(high.t(), grad));
    } else {
      projected = grad - at::mm(at::mm(grad, high.t()), high);
    }
    return {projected, at::Tensor(), at::Tensor()};
  }
};

class OsfLayer final : public KeptWeightLayer {
 public:
  OsfLayer(const LayerRequest& request, const Method& method) : KeptWeightLayer(request, method, containers()) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward) override {
    // Python computes with the first active adapter alone.
    const at::Tensor weight = reconstruct(active.front()->name);
    at::Tensor bias = base_layer().bias();
    if (bias.defined() && bias.scalar_type() != weight.scalar_type()) bias = bias.to(weight.scalar_type());
    const at::Tensor input = x.scalar_type() == weight.scalar_type() ? x : x.to(weight.scalar_type());
    return at::linear(input, weight, bias).to(x.scalar_type());
  }

  /// Python's merge replaces the weight by the adapter's rebuilt one, whatever was merged before.
  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    return {reconstruct(record.name).to(weight.device(), weight.scalar_type()), bias};
  }

 private:
  const at::Tensor& low(const std::string& adapter, const char* name) const {
    const std::shared_ptr<torch::nn::Module> dict = module(kSvd, adapter);
    TORCH_INTERNAL_ASSERT(dict, "adapter '", adapter, "' has no osf_svd_params");
    const at::Tensor* tensor = parameters_of(*dict).find(name);
    TORCH_INTERNAL_ASSERT(tensor, "adapter '", adapter, "' has no ", name);
    return *tensor;
  }

  /// Python's reconstruct_weight_matrix, with the gradient projection on U_low and V_low.
  at::Tensor reconstruct(const std::string& adapter) const {
    const at::Tensor& u_high = param(kUHigh, adapter);
    const at::Tensor& s_high = param(kSHigh, adapter);
    const at::Tensor& v_high = param(kVHigh, adapter);
    at::Tensor u_low = low(adapter, "U_low");
    const at::Tensor& s_low = low(adapter, "S_low");
    at::Tensor v_low = low(adapter, "V_low");
    if (at::GradMode::is_enabled()) {
      if (u_low.requires_grad()) u_low = ProjectGradient::apply(u_low, u_high, true);
      if (v_low.requires_grad()) v_low = ProjectGradient::apply(v_low, v_high, false);
    }
    const bool has_high = u_high.numel() > 0 && s_high.numel() > 0;
    const bool has_low = u_low.numel() > 0 && s_low.numel() > 0;
    // Python fills an empty part with float32 zeros on the other part's device.
    const at::Tensor high = has_high ? at::mm(u_high * s_high.unsqueeze(0), v_high)
                                     : at::zeros({u_low.size(0), v_low.size(1)}, at::TensorOptions().device(u_high.device()));
    const at::Tensor low_part = has_low ? at::mm(u_low * s_low.unsqueeze(0), v_low)
                                        : at::zeros({u_high.size(0), v_high.size(1)}, at::TensorOptions().device(u_low.device()));
    return high + low_part;
  }

};

/// Python's _resolve_rank: unset -> half the smaller dimension; a float in (0, 1] -> that fraction of it
/// (truncated); anything else truncated to an int; then clamped to [0, min_dim].
int64_t resolve_rank(const std::optional<OsfRank>& value, int64_t min_dim) {
  if (!value) return std::max<int64_t>(min_dim / 2, 0);
  int64_t r = 0;
  if (value->is_float()) {
    const double f = value->float_value();
    r = (f > 0 && f <= 1) ? static_cast<int64_t>(static_cast<double>(min_dim) * f) : static_cast<int64_t>(f);
  } else {
    r = value->int_value();
  }
  return std::max<int64_t>(std::min(min_dim, r), 0);
}

class OsfBuilder final : public BuilderOf<OsfConfig> {
 public:
  OsfBuilder(const Method& method, OsfConfig& config) : BuilderOf(method, config) {
    if (config.rank_pattern()) {
      for (const auto& [key, rank] : *config.rank_pattern()) {
        // re.search: a match anywhere in the name.
        patterns_.emplace_back(PythonRegex(".*?(?:" + key + ")", PythonRegex::Anchor::Start, "rank_pattern"), rank);
      }
    }
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    const at::Tensor weight = base.weight().detach();
    const int64_t out = weight.size(0), in = weight.size(1);
    const int64_t min_dim = std::min(out, in);
    int64_t k = resolve_rank(config_.effective_rank(), min_dim);
    for (const auto& [regex, rank] : patterns_) {
      if (regex.matches(request.module_name)) {
        k = resolve_rank(rank, min_dim);
        break;
      }
    }
    if (k <= 0) {
      throw ConfigError("`effective_rank` should be a positive integer value but the value passed is " +
                        std::to_string(k) + " (layer '" + request.module_name + "')");
    }

    // The frozen part is computed from the weight even with low_cpu_mem_usage (Python's buffers are not
    // made on the meta device); the trained part is then empty until the checkpoint is loaded.
    const at::TensorOptions low_options = adapter_options(base, request.low_cpu_mem_usage);
    const bool meta_weight = weight.device().is_meta();
    const at::TensorOptions high_options = weight.options();
    at::Tensor u_high, s_high, v_high, u_low, s_low, v_low;
    if (meta_weight) {
      u_high = at::empty({out, k}, high_options), s_high = at::empty({k}, high_options);
      v_high = at::empty({k, in}, high_options);
      u_low = at::empty({out, min_dim - k}, low_options), s_low = at::empty({min_dim - k}, low_options);
      v_low = at::empty({min_dim - k, in}, low_options);
    } else {
      at::NoGradGuard no_grad;
      const auto [u, s, vh] = at::linalg_svd(weight.to(at::kFloat), /*full_matrices=*/false);
      auto part = [](const at::Tensor& t, const at::TensorOptions& options) {
        return t.contiguous().to(options.device(), options.dtype().toScalarType());
      };
      u_high = part(u.slice(1, 0, k), high_options);
      s_high = part(s.slice(0, 0, k), high_options);
      v_high = part(vh.slice(0, 0, k), high_options);
      if (materialised(low_options)) {
        u_low = part(u.slice(1, k), low_options);
        s_low = part(s.slice(0, k), low_options);
        v_low = part(vh.slice(0, k), low_options);
      } else {
        u_low = at::empty({out, min_dim - k}, low_options), s_low = at::empty({min_dim - k}, low_options);
        v_low = at::empty({min_dim - k, in}, low_options);
      }
    }
    auto svd = std::make_shared<ParameterDictImpl>();
    // Python's ParameterDict lists its keys sorted.
    svd->insert("S_low", s_low);
    svd->insert("U_low", u_low);
    svd->insert("V_low", v_low);

    DictAdapterLayer::NewAdapter adapter;
    adapter.record = std::make_shared<AdapterRecord>(request.adapter_name);
    adapter.tensors = {{kUHigh, u_high}, {kSHigh, s_high}, {kVHigh, v_high}};
    adapter.modules = {{kSvd, svd}};
    return prepare_dict_adapter<OsfLayer>(request, method_, std::move(adapter));
  }

 private:
  std::vector<std::pair<PythonRegex, OsfRank>> patterns_;
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, OsfConfig& config) {
  return std::make_unique<OsfBuilder>(method, config);
}

}  // namespace peft::detail::osf
