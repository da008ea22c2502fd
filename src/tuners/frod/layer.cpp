// FRoD (Python PEFT's tuners/frod): the adapted weight is W' = U (S + diag(lambda_l)) V^T. Per category of layers
// (category_of) and adapter, V (in x in) comes from the base weights of the category's layers (an SVD of their
// stack when it is wide, else a QR and the eigenvectors of the averaged regularised inverses), and the sparse
// pattern of S (off-diagonal COO indices) is drawn from projection_prng_key. Per layer, U (frozen) and lambda_l
// solve W = U diag(lambda_l) V^T; S's values (frod_lambda_s_values) start at zero. The forward computes W' x
// directly; a merge adds W' - W (W: the weight before the first merge) and the unmerge restores W, as Python does.

#include <algorithm>
#include <map>
#include <mutex>
#include <set>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_sparse_mm.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/diag_embed.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linalg_eigh.h>
#include <ATen/ops/linalg_inv.h>
#include <ATen/ops/linalg_pinv.h>
#include <ATen/ops/linalg_qr.h>
#include <ATen/ops/linalg_solve.h>
#include <ATen/ops/linalg_svd.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/meshgrid.h>
#include <ATen/ops/randn_like.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/sparse_coo_tensor.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <peft/error.h>

#include "tuners/common/layer_checks.h"
#include "tuners/common/merge_from_original.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/frod/layer.h"

namespace peft::detail::frod {
namespace {

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  double dropout = 0;
};

bool is_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return c >= '0' && c <= '9'; });
}

std::vector<std::string> split_dots(const std::string& key) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) return parts;
    start = dot + 1;
  }
}

/// Python's _layer_index_from_key: the number after a "layers" part, else the first numeric part, else `fallback`.
int64_t layer_index_of(const std::string& key, int64_t fallback) {
  const std::vector<std::string> parts = split_dots(key);
  const auto layers = std::find(parts.begin(), parts.end(), "layers");
  if (layers != parts.end() && layers + 1 != parts.end() && is_digits(*(layers + 1))) return std::stoll(*(layers + 1));
  for (const std::string& part : parts) {
    if (is_digits(part)) return std::stoll(part);
  }
  return fallback;
}

class FrodLayer final : public KeptWeightLayer {
 public:
  enum Index : size_t { LAMBDA_L, S_VALUES, V, S_INDICES, S_SIZE, U };

  FrodLayer(const LayerRequest& request, const Method& method)
      : KeptWeightLayer(request, method,
                         {{"frod_lambda_l"},
                          {"frod_lambda_s_values"},
                          // Frozen, shared by the adapter's layers of one category (Method::shares).
                          {"frod_V", false, true, /*holds_buffers=*/true},
                          {"frod_s_indices", false, true, /*holds_buffers=*/true},
                          {"frod_s_size", false, true, /*holds_buffers=*/true},
                          // Frozen, solved from the base weight at injection; Python does not save it.
                          {"frod_U", false, /*in_checkpoint=*/false, /*holds_buffers=*/true}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const c10::ScalarType dtype = x.scalar_type();
    const bool training = base.is_training();
    const at::Tensor bias = base_layer().bias();
    auto dropping = [&](const AdapterRecord& r) { return training && static_cast<const Record&>(r).dropout > 0; };
    // One adapter without active dropout: W' x is the whole output, the base forward is not needed.
    const bool skip_base = active.size() == 1 && !dropping(*active.front());
    at::Tensor result, base_out, weight;
    if (!skip_base) {
      result = base_forward(x);
      base_out = bias.defined() ? result - bias : result;
    }
    for (const auto& r : active) {
      const auto& record = static_cast<const Record&>(*r);
      const at::TensorOptions options = x.options();
      const at::Tensor h = record.dropout > 0 ? at::dropout(x, record.dropout, training) : x;
      const at::Tensor h_flat = h.reshape({-1, h.size(-1)});
      const at::Tensor z = at::matmul(h_flat, param(V, record.name).to(options));
      const at::Tensor s = sparse_s(record.name, options);
      at::Tensor z_s;
      if (s._nnz() == 0) {
        z_s = at::zeros_like(z);
      } else if (dtype == at::kHalf || dtype == at::kBFloat16) {
        z_s = at::matmul(z, s.to_dense().t());
      } else {
        z_s = at::_sparse_mm(s, z.t()).t();
      }
      const at::Tensor z_l = z * param(LAMBDA_L, record.name).to(options);
      const at::Tensor out_flat = at::linear(z_s + z_l, param(U, record.name).to(options));
      std::vector<int64_t> shape = h.sizes().vec();
      shape.back() = out_flat.size(-1);
      const at::Tensor out = out_flat.reshape(shape);
      if (skip_base) {
        result = bias.defined() ? out + bias : out;
      } else if (!dropping(record)) {
        result = result + out - base_out;
      } else {
        if (!weight.defined()) weight = oriented(base_layer().weight()).to(options);
        result = result + out - at::linear(h, weight);
      }
    }
    return result.to(dtype);
  }

  /// W' - W, W the weight before the first merge (the current one outside a merge), laid out like the weight.
  at::Tensor delta_weight(const AdapterRecord& record) const override {
    const at::Tensor weight = base_layer().weight().detach();
    const at::TensorOptions options = weight.options();
    const at::Tensor reference = pending_original_.defined() ? pending_original_.to(options) : weight;
    const at::Tensor s = sparse_s(record.name, options).to_dense();
    const at::Tensor l = at::diag_embed(param(LAMBDA_L, record.name).to(options));
    const at::Tensor adapted =
        at::matmul(at::matmul(param(U, record.name).to(options), s + l), param(V, record.name).to(options).t());
    return oriented(adapted - oriented(reference));
  }

 private:
  /// (out, in) from the stored layout, and back.
  at::Tensor oriented(const at::Tensor& weight) const { return base_layer().fan_in_fan_out ? weight.t() : weight; }

  /// S as Python builds it: a coalesced COO tensor of the adapter's indices and values.
  at::Tensor sparse_s(const std::string& adapter, const at::TensorOptions& options) const {
    const at::Tensor size = param(S_SIZE, adapter).cpu();
    const auto* dims = size.data_ptr<int64_t>();
    const at::Tensor indices = param(S_INDICES, adapter).to(options.device(), at::kLong);
    const at::Tensor values = param(S_VALUES, adapter).to(options);
    return at::sparse_coo_tensor(indices, values, {dims[0], dims[1]}).coalesce();
  }

};

/// Python's _projection_from_weights on float32 CPU matrices (out_i x in).
at::Tensor projection(const std::vector<at::Tensor>& matrices, double alpha) {
  const at::Tensor stacked = at::cat(matrices, 0);
  if (stacked.size(0) < stacked.size(1)) {
    return std::get<2>(at::linalg_svd(stacked, /*full_matrices=*/true)).t();
  }
  const auto [q, r] = at::linalg_qr(stacked);
  const int64_t dim = r.size(1);
  const at::TensorOptions options = at::TensorOptions().dtype(r.scalar_type());
  at::Tensor t_pi = at::zeros({dim, dim}, options);
  int64_t start = 0;
  for (const at::Tensor& matrix : matrices) {
    const at::Tensor slice = q.narrow(0, start, matrix.size(0));
    start += matrix.size(0);
    const at::Tensor term = at::matmul(slice.t(), slice) + alpha * at::eye(dim, options);
    t_pi += at::linalg_inv(term);
  }
  t_pi.div_(static_cast<int64_t>(matrices.size()));
  const at::Tensor eigenvectors = std::get<1>(at::linalg_eigh(t_pi));
  return at::matmul(r.t(), eigenvectors);
}

/// Python's _calculate_frod_u_and_lambda in float64: U diag(lambda) = W V^-T, lambda the column norms.
std::pair<at::Tensor, at::Tensor> solve_u_and_lambda(const at::Tensor& v_in, const at::Tensor& w_in) {
  const at::Tensor w = w_in.detach().to(at::kDouble).cpu();
  const at::Tensor v = v_in.detach().to(at::kDouble).cpu();
  at::Tensor bi;
  try {
    bi = at::linalg_solve(v, w.t()).t();
  } catch (const c10::Error&) {
    bi = at::matmul(w, at::linalg_pinv(v, c10::nullopt, 1e-6).t());
  }
  const at::Tensor lambda = at::linalg_vector_norm(bi, 2, {0});
  const at::Tensor nonzero = lambda > 1e-12;
  const at::Tensor u = at::where(nonzero, bi / lambda, at::zeros_like(bi));
  return {u.to(at::kFloat), lambda.to(at::kFloat)};
}

/// One category's shared tensors for one adapter.
struct Shared {
  at::Tensor v, indices, size;
};

class FrodBuilder final : public BuilderOf<FrodConfig> {
 public:
  using BuilderOf::BuilderOf;

  // Python's _init_frod_projections: every category's V and sparse pattern, before any layer. A category a layer
  // already has from an earlier FRoD adapter keeps that adapter's tensors (Python's add_adapter: update_layer copies
  // the category's first adapter's); the others are computed here.
  void plan(const std::vector<LayerRequest>& requests) override {
    std::set<std::string> missing;
    for (const LayerRequest& request : requests) {
      const std::string category = category_of(request.module_name);
      if (shared_.count(category)) continue;
      const auto* existing = dynamic_cast<const FrodLayer*>(request.existing);
      const std::vector<std::string> names = existing ? existing->adapter_names() : std::vector<std::string>();
      const auto first = std::find_if(names.begin(), names.end(),
                                      [&](const std::string& name) { return existing->has_param(FrodLayer::V, name); });
      if (first != names.end()) {
        shared_[category] = {existing->param(FrodLayer::V, *first), existing->param(FrodLayer::S_INDICES, *first),
                             existing->param(FrodLayer::S_SIZE, *first)};
        missing.erase(category);
      } else {
        missing.insert(category);
      }
    }
    if (missing.empty()) return;
    for (auto& [category, shared] : compute(requests)) {
      if (missing.count(category)) shared_[category] = std::move(shared);
    }
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    const auto found = shared_.find(category_of(request.module_name));
    if (found == shared_.end()) {
      throw ConfigError("The FRoD projection buffers are missing. This should not happen.");
    }
    const Shared& shared = found->second;
    auto record = std::make_shared<Record>(request.adapter_name);
    record->dropout = config_.frod_dropout();

    const at::Tensor stored = base.weight().detach();
    const at::Tensor weight = base.fan_in_fan_out ? stored.t() : stored;
    if (weight.size(1) != shared.v.size(0)) {
      throw ConfigError("FRoD layer '" + request.module_name + "' has " + std::to_string(weight.size(1)) +
                        " input features, its category's basis " + std::to_string(shared.v.size(0)) + ".");
    }
    auto [u, lambda] = solve_u_and_lambda(shared.v.to(stored.scalar_type()), weight);
    const at::TensorOptions dense = stored.options();
    u = u.to(dense);
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    const int64_t nnz = shared.indices.size(1);
    at::Tensor values = at::empty({nnz}, options);
    at::Tensor lambda_l = at::empty({lambda.size(0)}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      values.zero_();
      lambda_l.copy_(lambda);
      if (!config_.init_weights()) {
        // Python's draws on the default generator: S's values, then lambda_l's perturbation.
        values.normal_(0.0, 0.1);
        lambda_l.add_(at::randn_like(lambda_l) * 0.1);
      }
    }
    return prepare_dict_adapter<FrodLayer>(request, method_,
                                           {record,
                                            {{FrodLayer::LAMBDA_L, lambda_l},
                                             {FrodLayer::S_VALUES, values},
                                             {FrodLayer::V, shared.v},
                                             {FrodLayer::S_INDICES, shared.indices},
                                             {FrodLayer::S_SIZE, shared.size},
                                             {FrodLayer::U, u}},
                                            {}});
  }

 private:
  /// Every category's tensors from this injection's layers and config, as Python's _init_frod_projections makes them.
  std::map<std::string, Shared> compute(const std::vector<LayerRequest>& requests) const {
    std::map<std::string, Shared> out;
    // layer index -> category -> weight (out x in); the last layer of a (index, category) wins, as in Python.
    std::map<int64_t, std::map<std::string, at::Tensor>> weights;
    std::map<std::string, at::Tensor> example;  // the first weight of each category, for V's dtype and device
    int64_t fallback = 0;
    for (const LayerRequest& request : requests) {
      const at::Tensor stored = request.base.weight().detach();
      if (stored.device().is_meta()) {
        throw ConfigError("FRoD computes its projections from the base weights, but layer '" + request.module_name +
                          "' has its weight on the meta device: load the base weights first.");
      }
      const at::Tensor weight = request.base.fan_in_fan_out ? stored.t() : stored;
      const std::string category = category_of(request.module_name);
      weights[layer_index_of(request.module_name, fallback++)][category] = weight;
      example.emplace(category, stored);
    }
    at::Generator generator = at::detail::createCPUGenerator(static_cast<uint64_t>(config_.projection_prng_key()));
    for (const auto& [category, first] : example) {  // sorted, as Python's categories
      std::vector<at::Tensor> matrices;
      for (const auto& entry : weights) {
        const auto it = entry.second.find(category);
        if (it != entry.second.end()) matrices.push_back(it->second.to(at::kFloat).cpu());
      }
      int64_t in_dim = matrices.front().size(1);
      for (const at::Tensor& m : matrices) {
        if (m.size(1) != in_dim) {
          throw ConfigError("FRoD shares one basis between the layers of category '" + category +
                            "', but their in_features differ (" + std::to_string(in_dim) + " and " +
                            std::to_string(m.size(1)) + ").");
        }
      }
      Shared shared;
      shared.v = projection(matrices, config_.regularization_alpha()).to(first.options());
      in_dim = shared.v.size(0);
      // The off-diagonal (row, col) pairs in row-major order; nnz of them drawn by a permutation.
      const at::TensorOptions longs = at::TensorOptions().dtype(at::kLong);
      const std::vector<at::Tensor> grid = at::meshgrid({at::arange(in_dim, longs), at::arange(in_dim, longs)}, "ij");
      const at::Tensor pairs = at::stack({grid[0].flatten(), grid[1].flatten()}, 1);
      const at::Tensor off_diagonal = pairs.index({pairs.select(1, 0) != pairs.select(1, 1)});
      const int64_t available = off_diagonal.size(0);
      int64_t nnz = std::min(static_cast<int64_t>(static_cast<double>(in_dim * in_dim) * config_.sparse_rate()), available);
      if (config_.sparse_rate() > 0 && available > 0) nnz = std::max<int64_t>(1, nnz);
      if (nnz > 0) {
        const at::Tensor perm = at::randperm(available, generator, longs).narrow(0, 0, nnz);
        shared.indices = off_diagonal.index({perm}).t().contiguous();
      } else {
        shared.indices = at::empty({2, 0}, longs);
      }
      shared.size = at::tensor(std::vector<int64_t>{in_dim, in_dim}, longs);
      out[category] = shared;
    }
    return out;
  }

  std::map<std::string, Shared> shared_;  // by category
};

}  // namespace

std::string category_of(const std::string& module_name) {
  const std::vector<std::string> parts = split_dots(module_name);
  if (parts.size() == 1) return parts[0];
  const std::string& last = parts.back();
  const std::string& second = parts[parts.size() - 2];
  if (is_digits(second)) return last;
  const std::string category = second + "_" + last;
  if (category == "output_dense" && parts.size() >= 3 && parts[parts.size() - 3] == "attention") return "attention_output";
  return category;
}

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, FrodConfig& config) {
  return std::make_unique<FrodBuilder>(method, config);
}

}  // namespace peft::detail::frod
