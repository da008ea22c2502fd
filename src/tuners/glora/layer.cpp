// GLoRA (Python PEFT's tuners/glora): each active adapter runs the layer with W0 + W0 * A + B and
// b0 + b0 * D + E + W0 @ C; the outputs are summed and the base output counted once. Each path is a small
// module in a ModuleDict (glora_A ... glora_E) with Python's parameter names: Xd and Xu ("lora"), X
// ("vector", "constant") or a `zeros` buffer ("none"). Merging computes every merged adapter's update from the
// original weights, as Python does (a merge first recovers them from the already merged ones).

#include <cmath>
#include <mutex>

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>
#include <torch/nn/init.h>
#include <torch/nn/module.h>

#include <peft/error.h>
#include <peft/tuners/glora/config.h>

#include "tuners/common/pending_adapter.h"
#include "tuners/glora/layer.h"

namespace peft::detail::glora {
namespace {

enum class Path { Lora, Vector, Constant, None };

Path path_of(const std::string& name) {
  if (name == "lora") return Path::Lora;
  if (name == "vector") return Path::Vector;
  if (name == "constant") return Path::Constant;
  return Path::None;
}

const char* class_name(Path path) {
  switch (path) {
    case Path::Lora: return "GloraLoraPath";
    case Path::Vector: return "GloraVectorPath";
    case Path::Constant: return "GloraScalarPath";
    case Path::None: break;
  }
  return "GloraEmptyPath";
}

/// One path of one adapter: its tensors under Python's names.
class GloraPathImpl : public torch::nn::Module {
 public:
  explicit GloraPathImpl(Path path) : torch::nn::Module(class_name(path)), path_(path) {}

  Path path() const { return path_; }

  /// The path's value: (rows, cols) for "lora", the vector, a 0-dim scalar, or the zeros.
  at::Tensor value() const {
    switch (path_) {
      case Path::Lora: return at::matmul(tensor("Xd"), tensor("Xu"));
      case Path::Vector: return tensor("X");
      case Path::Constant: return tensor("X")[0];
      case Path::None: break;
    }
    return *named_buffers(/*recurse=*/false).find("zeros");
  }

 private:
  at::Tensor tensor(const char* name) const { return *named_parameters(/*recurse=*/false).find(name); }

  Path path_;
};

/// Which path each matrix of an adapter uses on this layer.
struct Record : AdapterRecord {
  Record(std::string name, Path a_b, Path c, Path d_e) : AdapterRecord(std::move(name)), a_b(a_b), c(c), d_e(d_e) {}
  Path a_b, c, d_e;
};

constexpr size_t kA = 0, kB = 1, kC = 2, kD = 3, kE = 4;

DictAdapterLayer::Container modules(const char* name) {
  DictAdapterLayer::Container container{name};
  container.holds_modules = true;
  return container;
}

class GloraLayer;

/// The weights a merge computed, written at commit.
class PendingGloraMerge final : public PendingChange {
 public:
  PendingGloraMerge(GloraLayer& layer, std::vector<std::string> merged, at::Tensor weight, at::Tensor bias)
      : layer_(layer), merged_(std::move(merged)), weight_(std::move(weight)), bias_(std::move(bias)) {}
  void commit() override;

 private:
  GloraLayer& layer_;
  std::vector<std::string> merged_;
  at::Tensor weight_, bias_;
};

class GloraLayer final : public DictAdapterLayer {
 public:
  GloraLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method,
                         {modules("glora_A"), modules("glora_B"), modules("glora_C"), modules("glora_D"),
                          modules("glora_E")}) {}

  std::unique_ptr<PendingChange> prepare_merge(torch::nn::Module&, const std::vector<std::string>& names,
                                               bool safe_merge) override {
    std::vector<std::string> merged, all;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      merged = merged_;
      all = merged;
      for (const std::string& name : names) {
        if (records_.count(name) && std::find(all.begin(), all.end(), name) == all.end()) all.push_back(name);
      }
    }
    if (all.size() == merged.size()) return nullptr;
    const BaseLayer& base = base_layer();
    if (base.weight().device().is_meta()) throw MergeError("Cannot merge into a layer whose weight is on the meta device.");
    at::NoGradGuard no_grad;
    auto [w0, b0] = detached_weight_and_bias();
    if (!merged.empty()) std::tie(w0, b0) = original(w0, b0, merged);
    at::Tensor weight = w0.clone();
    at::Tensor bias = b0.defined() ? b0.clone() : b0;
    for (const std::string& name : all) {
      weight += w0 * value(kA, name, w0) + value(kB, name, w0);
      if (b0.defined()) {
        bias += b0 * value(kD, name, w0) + value(kE, name, w0) + at::matmul(w0, value(kC, name, w0)).squeeze(-1);
      }
    }
    if (safe_merge && (!at::isfinite(weight).all().item<bool>() ||
                       (bias.defined() && !at::isfinite(bias).all().item<bool>()))) {
      std::string list;
      for (const auto& name : all) list += (list.empty() ? "" : ", ") + name;
      throw MergeError("NaNs detected in the merged weights. The adapter " + list + " seems to be broken");
    }
    return std::make_unique<PendingGloraMerge>(*this, std::move(all), weight.contiguous(),
                                               bias.defined() ? bias.contiguous() : bias);
  }

  void unmerge(torch::nn::Module&) override {
    at::NoGradGuard no_grad;
    std::lock_guard<std::mutex> lock(mutex_);
    if (merged_.empty()) return;
    const BaseLayer& base = base_layer();
    auto [weight, bias] = detached_weight_and_bias();
    std::tie(weight, bias) = original(weight, bias, merged_);
    base.weight().set_data(weight.contiguous());
    if (bias.defined()) base.bias().set_data(bias.contiguous());
    merged_.clear();
    publish();
  }

  void commit_merge(std::vector<std::string> merged, const at::Tensor& weight, const at::Tensor& bias) {
    at::NoGradGuard no_grad;
    const BaseLayer& base = base_layer();
    base.weight().set_data(weight);
    if (bias.defined()) base.bias().set_data(bias);
    std::lock_guard<std::mutex> lock(mutex_);
    merged_ = std::move(merged);
    publish();
  }

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const at::Tensor base_result = base_forward(x);
    const at::Tensor weight = base_layer().weight(), bias = base_layer().bias();
    at::Tensor result = base_result;
    for (const auto& record : active) {
      const std::string& name = record->name;
      const at::Tensor weight_eff = weight + weight * value(kA, name, weight) + value(kB, name, weight);
      at::Tensor bias_eff;
      if (bias.defined()) {
        bias_eff = bias + bias * value(kD, name, weight) + value(kE, name, weight) +
                   at::matmul(weight, value(kC, name, weight)).squeeze(-1);
      }
      result = result + at::linear(x, weight_eff, bias_eff);
    }
    if (!active.empty()) result = result - static_cast<double>(active.size()) * base_result;
    return result.to(base_result.scalar_type());
  }

  bool merge_touches_bias() const override { return true; }

 private:
  /// The path's value on the weight's device and dtype.
  at::Tensor value(size_t index, const std::string& adapter, const at::Tensor& like) const {
    const auto& path = dynamic_cast<const GloraPathImpl&>(*module(index, adapter));
    return path.value().to(like.device(), like.scalar_type());
  }

  /// Python's unmerge: the original weights from merged ones, W0 = (W - sum B) / (1 + sum A) and
  /// b0 = (b - sum E - sum W0 @ C) / (1 + sum D).
  std::pair<at::Tensor, at::Tensor> original(const at::Tensor& weight, const at::Tensor& bias,
                                             const std::vector<std::string>& merged) const {
    at::Tensor sum_a = at::zeros_like(weight), sum_b = at::zeros_like(weight);
    for (const auto& name : merged) {
      sum_a += value(kA, name, weight);
      sum_b += value(kB, name, weight);
    }
    const at::Tensor w0 = (weight - sum_b) / (sum_a + 1.0);
    if (!bias.defined()) return {w0, bias};
    at::Tensor sum_d = at::zeros_like(bias), sum_e = at::zeros_like(bias), sum_wc = at::zeros_like(bias);
    for (const auto& name : merged) {
      sum_d += value(kD, name, weight);
      sum_e += value(kE, name, weight);
      sum_wc += at::matmul(w0, value(kC, name, weight)).squeeze(-1);
    }
    return {w0, (bias - sum_e - sum_wc) / (sum_d + 1.0)};
  }
};

void PendingGloraMerge::commit() { layer_.commit_merge(std::move(merged_), weight_, bias_); }

class GloraBuilder final : public BuilderOf<GloraConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    const int64_t in = base.in_features, out = base.out_features, r = config_.r();
    const bool has_bias = base.bias().defined();
    const Path a_b = path_of(config_.config_A_B());
    const Path c = has_bias ? path_of(config_.config_C()) : Path::None;
    const Path d_e = has_bias ? path_of(config_.config_D_E()) : Path::None;
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    // The zeros of a "none" path hold values even with low_cpu_mem_usage (Python keeps buffers real).
    const at::TensorOptions zeros_options = adapter_options(base, false);
    const bool init = materialised(options);
    const bool zero_init = config_.init_weights();

    auto lora = [&](int64_t rows, int64_t cols) {
      auto path = std::make_shared<GloraPathImpl>(Path::Lora);
      at::Tensor xd = at::empty({rows, r}, options), xu = at::empty({r, cols}, options);
      if (init) {
        at::NoGradGuard no_grad;
        torch::nn::init::kaiming_uniform_(xu, std::sqrt(5.0));
        if (zero_init) {
          xd.zero_();
        } else {
          torch::nn::init::kaiming_uniform_(xd, std::sqrt(5.0));
        }
      }
      path->register_parameter("Xd", xd);
      path->register_parameter("Xu", xu);
      return path;
    };
    auto vector = [&](int64_t features, bool column) {
      auto path = std::make_shared<GloraPathImpl>(Path::Vector);
      at::Tensor x = column ? at::empty({features, 1}, options) : at::empty({features}, options);
      if (init) {
        at::NoGradGuard no_grad;
        if (zero_init) {
          x.zero_();
        } else {
          torch::nn::init::kaiming_uniform_(column ? x : x.unsqueeze(0), std::sqrt(5.0));
        }
      }
      path->register_parameter("X", x);
      return path;
    };
    auto scalar = [&] {
      auto path = std::make_shared<GloraPathImpl>(Path::Constant);
      at::Tensor x = at::empty({1}, options);
      if (init) {
        at::NoGradGuard no_grad;
        if (zero_init) {
          x.zero_();
        } else {
          x.normal_(0.0, 0.02);
        }
      }
      path->register_parameter("X", x);
      return path;
    };
    auto empty = [&](std::vector<int64_t> shape) {
      auto path = std::make_shared<GloraPathImpl>(Path::None);
      path->register_buffer("zeros", at::zeros(shape, zeros_options));
      return path;
    };

    DictAdapterLayer::NewAdapter adapter;
    adapter.record = std::make_shared<Record>(request.adapter_name, a_b, c, d_e);
    // Made in Python's order (A, B, C, D, E), so random draws match.
    for (size_t index : {kA, kB}) {
      std::shared_ptr<GloraPathImpl> path;
      switch (a_b) {
        case Path::Lora: path = lora(out, in); break;
        case Path::Vector: path = vector(out, true); break;
        case Path::Constant: path = scalar(); break;
        case Path::None: path = empty({out, in}); break;
      }
      adapter.modules.emplace_back(index, path);
    }
    switch (c) {
      case Path::Lora: adapter.modules.emplace_back(kC, lora(in, 1)); break;
      case Path::Vector: adapter.modules.emplace_back(kC, vector(in, true)); break;
      default: adapter.modules.emplace_back(kC, empty({in, 1})); break;
    }
    for (size_t index : {kD, kE}) {
      switch (d_e) {
        case Path::Vector: adapter.modules.emplace_back(index, vector(out, false)); break;
        case Path::Constant: adapter.modules.emplace_back(index, scalar()); break;
        default: adapter.modules.emplace_back(index, empty({out})); break;
      }
    }
    return prepare_dict_adapter<GloraLayer>(request, method_, std::move(adapter));
  }
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, GloraConfig& config) {
  return std::make_unique<GloraBuilder>(method, config);
}

}  // namespace peft::detail::glora
