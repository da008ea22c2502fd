// PSOFT (Python PEFT's tuners/psoft): from the SVD of the layer's weight W (out, in) = U S V^T (full, or
// torch.svd_lowrank's randomised one), frozen factors of its top-r subspace are kept as buffers left out of
// checkpoints (Python's non-persistent BufferDicts _psoft_A_cache / _psoft_B_cache, float32):
//   psoft_init: A = V_r^T (r, in), B = U_r diag(S_r / scaling) (out, r);
//   pissa_init: A = diag(sqrt(S_r / scaling)) V_r^T, B = U_r diag(sqrt(S_r / scaling)).
// The trained psoft_R.<adapter> (Python's OrthLayer) gives an r x r matrix R: with psoft_orth the Cayley
// transform (I + Q)(I - Q)^-1 of the skew-symmetric Q whose upper triangle is `weight` (or its Neumann
// series), otherwise `weight` itself; then rows scaled by vector_b and columns by vector_a. Each active adapter
// adds scaling * ((x A^T) R^T - x A^T) B^T to the output, scaling = psoft_alpha / r; merging adds
// scaling * B (R - I) A to the weight.

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/diag.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linalg_norm.h>
#include <ATen/ops/linalg_solve.h>
#include <ATen/ops/linalg_svd.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randn_like.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/triu_indices.h>
#include <ATen/ops/zeros.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <peft/error.h>
#include <peft/tuners/psoft/config.h>

#include "tuners/common/pending_adapter.h"
#include "tuners/common/svd_lowrank.h"
#include "tuners/psoft/layer.h"

namespace peft::detail::psoft {
namespace {

enum Containers : size_t { kDropout = 0, kR = 1, kA = 2, kB = 3 };

std::vector<DictAdapterLayer::Container> containers() {
  auto cache = [](const char* name) {
    DictAdapterLayer::Container c{name};
    c.holds_buffers = true;
    c.in_checkpoint = false;  // Python's BufferDict(persistent=False)
    return c;
  };
  // Python's registration order: psoft_dropout, psoft_R, then the caches.
  return {{"psoft_dropout", true, false}, {"psoft_R", true}, cache("_psoft_A_cache"), cache("_psoft_B_cache")};
}

const char* python_bool(bool value) { return value ? "True" : "False"; }

/// Python's OrthLayer: the trained r x r transformation. Its tensors are looked up by name on every use, so a
/// low_cpu_mem_usage load that puts new tensors in place is seen.
class OrthLayerImpl : public torch::nn::Module {
 public:
  OrthLayerImpl(int64_t size, const PsoftConfig& config, const at::TensorOptions& options)
      : torch::nn::Module("OrthLayer"),
        size_(size),
        orth_(config.psoft_orth()),
        mag_b_(config.psoft_mag_b()),
        mag_a_(config.psoft_mag_a()),
        cayley_neumann_(config.use_cayley_neumann()),
        terms_(config.num_cayley_neumann_terms()),
        eps_(config.cayley_neumann_eps()) {
    register_parameter("weight", orth_ ? at::empty({size * (size - 1) / 2}, options) : at::empty({size, size}, options));
    if (mag_b_) register_parameter("vector_b", at::empty({size}, options));
    if (mag_a_) register_parameter("vector_a", at::empty({size}, options));
  }

  /// Python's reset_parameters (the caller skips it on the meta device).
  void reset(bool init_weights) {
    at::NoGradGuard no_grad;
    const at::Tensor weight = tensor("weight");
    if (orth_) {
      if (init_weights) {
        weight.zero_();
      } else {
        weight.normal_(0.0, 0.1);
      }
    } else {
      weight.copy_(at::eye(size_, weight.options()));
      if (!init_weights) weight.add_(at::randn_like(weight) * 0.1);
    }
    for (const char* name : {"vector_b", "vector_a"}) {
      if (const at::Tensor* v = parameters_of(*this).find(name)) v->fill_(1.0);
    }
  }

  /// Python's get_matrix.
  at::Tensor matrix() const {
    const at::Tensor weight = tensor("weight");
    at::Tensor r;
    bool cast_to_fp32 = false;
    c10::ScalarType orig_dtype = weight.scalar_type();
    if (!orth_) {
      r = weight;
    } else {
      at::Tensor q = at::zeros({size_, size_}, weight.options());
      const at::Tensor indices = at::triu_indices(size_, size_, 1, at::TensorOptions().dtype(at::kLong).device(weight.device()));
      q = q.index_put({indices[0], indices[1]}, weight);
      q = q - q.transpose(0, 1);
      orig_dtype = q.scalar_type();
      const at::Tensor id = at::eye(size_, q.options());
      if (cayley_neumann_) {
        if (eps_) q = project(q, *eps_);
        const int64_t t = terms_;
        r = id.clone();
        if (t > 1) {
          r.add_(q, 2.0);
          if (t > 2) {
            const at::Tensor q_squared = at::matmul(q, q);
            r.add_(q_squared, 2.0);
            at::Tensor q_power = q_squared;
            for (int64_t i = 3; i < t - 1; ++i) {
              q_power = at::matmul(q_power, q);
              r.add_(q_power, 2.0);
            }
            q_power = at::matmul(q_power, q);
            r.add_(q_power);
          }
        }
      } else {
        cast_to_fp32 = orig_dtype == at::kHalf || orig_dtype == at::kBFloat16;
        at::Tensor qc = cast_to_fp32 ? q.to(at::kFloat) : q;
        const at::Tensor idc = cast_to_fp32 ? id.to(at::kFloat) : id;
        r = at::linalg_solve(idc - qc, idc + qc, /*left=*/false);
      }
    }
    if (const at::Tensor* b = parameters_of(*this).find("vector_b")) r = b->unsqueeze(1) * r;
    if (const at::Tensor* a = parameters_of(*this).find("vector_a")) r = r * a->unsqueeze(0);
    if (cast_to_fp32) r = r.to(orig_dtype);
    return r;
  }

  /// Python's OrthLayer.forward: input @ R^T (in float32 for CPU half precision).
  at::Tensor forward(const at::Tensor& input) const {
    const at::Tensor r = matrix();
    const bool half = input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16;
    const c10::ScalarType compute = input.device().is_cpu() && half ? at::kFloat : input.scalar_type();
    return at::matmul(input.to(compute), r.to(compute).t()).to(input.scalar_type());
  }

  void pretty_print(std::ostream& stream) const override {
    stream << "psoft.OrthLayer(size=" << size_ << ", orth=" << python_bool(orth_)
           << ", use_cayley_neumann=" << python_bool(cayley_neumann_) << ", num_cayley_neumann_terms=" << terms_
           << ", cayley_neumann_eps=" << (eps_ ? nlohmann::json(*eps_).dump() : "None")
           << ", mag_a=" << python_bool(mag_a_) << ", mag_b=" << python_bool(mag_b_) << ")";
  }

 private:
  const at::Tensor& tensor(const char* name) const {
    const at::Tensor* t = parameters_of(*this).find(name);
    TORCH_INTERNAL_ASSERT(t, "psoft_R has no ", name);
    return *t;
  }

  static at::Tensor project(const at::Tensor& q, double eps) {
    const at::Tensor norm = at::linalg_norm(q, "fro");
    if (at::isfinite(norm).item<bool>() && norm.item<double>() > eps) return q * (eps / (norm + 1e-12));
    return q;
  }

  int64_t size_;
  bool orth_, mag_b_, mag_a_, cayley_neumann_;
  int64_t terms_;
  std::optional<double> eps_;
};

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  int64_t r = 0;
  double scaling = 1.0;
  torch::nn::DropoutImpl* dropout = nullptr;  // owned by psoft_dropout; null for Identity
  const OrthLayerImpl* orth = nullptr;        // owned by psoft_R
};

class PsoftLayer final : public DictAdapterLayer {
 public:
  PsoftLayer(const LayerRequest& request, const Method& method) : DictAdapterLayer(request, method, containers()) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    at::Tensor result = base_forward(x);
    const c10::ScalarType result_dtype = result.scalar_type();
    for (const auto& entry : active) {
      const auto& record = static_cast<const Record&>(*entry);
      const at::Tensor& a = param(kA, record.name);
      const at::Tensor& b = param(kB, record.name);
      const at::Tensor cast = x.scalar_type() == a.scalar_type() ? x : x.to(a.scalar_type());
      const at::Tensor dropped = record.dropout ? record.dropout->forward(cast) : cast;
      const at::Tensor a_c = a.to(dropped.device(), dropped.scalar_type());
      const at::Tensor b_c = b.to(dropped.device(), dropped.scalar_type());
      const at::Tensor xa = at::matmul(dropped, a_c.t());
      const at::Tensor xr = record.orth->forward(xa);
      const at::Tensor delta = at::matmul(xr - xa, b_c.t());
      result = result + delta * record.scaling;
    }
    return result.to(result_dtype);
  }

  /// Python's get_delta_weight: scaling * B (R - I) A in the weight's dtype (computed in float32 for CPU half
  /// precision).
  at::Tensor delta_weight(const AdapterRecord& entry) const override {
    const auto& record = static_cast<const Record&>(entry);
    const at::Tensor weight = base_layer().weight();
    const c10::ScalarType out = weight.scalar_type();
    const bool half = out == at::kHalf || out == at::kBFloat16;
    const c10::ScalarType compute = weight.device().is_cpu() && half ? at::kFloat : out;
    const at::Tensor a = param(kA, record.name).to(weight.device(), compute);
    const at::Tensor b = param(kB, record.name).to(weight.device(), compute);
    const at::Tensor r = record.orth->matrix().to(weight.device(), compute);
    const at::Tensor id = at::eye(record.r, at::TensorOptions().device(weight.device()).dtype(compute));
    const at::Tensor delta = at::matmul(at::matmul(b, r - id), a) * record.scaling;
    return delta.to(out);
  }
};

class PsoftBuilder final : public BuilderOf<PsoftConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    if (config_.fan_in_fan_out()) {
      TORCH_WARN("fan_in_fan_out=True is not compatible with `torch.nn.Linear`. Setting fan_in_fan_out=False.");
      config_.fan_in_fan_out(false);
    }
    const int64_t r = config_.r();
    const at::Tensor weight = base.weight().detach();
    const c10::ScalarType dtype = weight.scalar_type();
    if (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) {
      throw ConfigError("PSOFT init requires float32/float16/bfloat16. Re-quantize after init if needed. (layer '" +
                        request.module_name + "')");
    }
    const int64_t out = weight.size(0), in = weight.size(1);
    if (r > std::min(out, in)) {
      throw ConfigError("PSOFT's r=" + std::to_string(r) + " is larger than min(out_features, in_features)=" +
                        std::to_string(std::min(out, in)) + " of layer '" + request.module_name +
                        "' (Python PEFT fails in the forward then)");
    }
    auto record = std::make_shared<Record>(request.adapter_name);
    record->r = r;
    record->scaling = config_.psoft_alpha() / static_cast<double>(r);

    std::shared_ptr<torch::nn::Module> dropout;
    if (config_.psoft_dropout() > 0) {
      auto module = std::make_shared<torch::nn::DropoutImpl>(torch::nn::DropoutOptions(config_.psoft_dropout()));
      record->dropout = module.get();
      dropout = module;
    } else {
      dropout = std::make_shared<torch::nn::IdentityImpl>();
    }

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    auto orth = std::make_shared<OrthLayerImpl>(r, config_, options);
    if (materialised(options)) orth->reset(config_.init_weights());
    record->orth = orth.get();

    at::Tensor a, b;
    const at::TensorOptions cache = at::TensorOptions().dtype(at::kFloat).device(weight.device());
    if (weight.device().is_meta()) {
      a = at::empty({r, in}, cache), b = at::empty({out, r}, cache);
    } else {
      std::tie(a, b) = factors(weight.to(at::kFloat), r, record->scaling);
    }
    return prepare_dict_adapter<PsoftLayer>(
        request, method_, {record, {{kA, a}, {kB, b}}, {{kDropout, dropout}, {kR, orth}}});
  }

 private:
  /// Python's _build_psoft_ab_cache_buffers: A (r, in) and B (out, r) from the float32 weight.
  std::pair<at::Tensor, at::Tensor> factors(const at::Tensor& w, int64_t r, double scaling) const {
    at::NoGradGuard no_grad;
    at::Tensor vr, sr, uhr;
    if (config_.psoft_svd() == "lowrank") {
      // Python seeds the global generator with random_seed inside fork_rng; a generator of its own here.
      at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(config_.random_seed()));
      const auto [u, s, v] = svd_lowrank(w, r, config_.psoft_svd_lowrank_niter(), generator);
      vr = u.slice(1, 0, r), sr = s.slice(0, 0, r), uhr = v.slice(1, 0, r).t();
    } else {
      const auto [u, s, vh] = at::linalg_svd(w, /*full_matrices=*/false);
      vr = u.slice(1, 0, r), sr = s.slice(0, 0, r), uhr = vh.slice(0, 0, r);
    }
    const at::Tensor scaled = sr / scaling;
    at::Tensor a, b;
    if (config_.ab_svd_init() == "pissa_init") {
      const at::Tensor root = at::sqrt(scaled);
      a = at::matmul(at::diag(root), uhr);
      b = at::matmul(vr, at::diag(root));
    } else {
      a = uhr;
      b = at::matmul(vr, at::diag(scaled));
    }
    return {a.contiguous(), b.contiguous()};
  }
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, PsoftConfig& config) {
  return std::make_unique<PsoftBuilder>(method, config);
}

}  // namespace peft::detail::psoft
