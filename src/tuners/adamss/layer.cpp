// AdaMSS (Python PEFT's tuners/adamss): from [W | b] (out, in [+ 1]) in float32, torch.svd_lowrank with
// q = min(r, out, in [+ 1]) (projection drawn from a generator seeded with random_seed, as Python's
// fork_rng + manual_seed) gives U (out, q) and V (in [+ 1], q). newB = V^T is the frozen projection (a
// persistent buffer, saved). The rows of U are clustered by k-means (kmeans.h) into min(num_subspaces, out)
// groups; group i (the output rows with label i, ascending) has A_i (rank_i, q), the transposed Q of the QR of
// U_i^T times the top rank_i eigenvectors of U_i U_i^T (torch.svd_lowrank on the global generator), and B_i
// (rows_i, rank_i), zero ("orthogonal") or 0.01 randn (None). rank_i = min(rows_i, subspace_rank), or with
// use_dynamic_rank the count of singular values of U_i U_i^T above svd_threshold times the largest (at most
// subspace_rank); at least 1. The checkpoint holds A_i, B_i (adamss_A.<i>, adamss_B.<i>) and newB; the row
// order (scatter index) is recomputed from the weight, as in Python. Each active adapter adds
// scatter(concat_i(B_i A_i newB [x; 1])) to the output; merging adds scatter(B_i A_i newB) to [W | b].

#include <numeric>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_qr.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/nn/module.h>

#include <peft/error.h>

#include "core/model_adapters.h"
#include "tuners/adamss/kmeans.h"
#include "tuners/adamss/layer.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/common/svd_lowrank.h"

namespace peft::detail::adamss {
namespace {

constexpr uint32_t kKMeansSeed = 123456789;  // clustering_Z's random_state
constexpr int64_t kKMeansIterations = 10;
constexpr int64_t kNiter = 2;

/// Python's nn.ParameterList: parameters named "0", "1", ...
class ParameterListImpl : public torch::nn::Module {
 public:
  ParameterListImpl() : torch::nn::Module("ParameterList") {}
};

DictAdapterLayer::Container modules(const char* name) {
  DictAdapterLayer::Container container{name};
  container.holds_modules = true;
  return container;
}

std::vector<DictAdapterLayer::Container> containers() {
  DictAdapterLayer::Container new_b{"adamss_newB"};
  new_b.holds_buffers = true;  // BufferDict(persistent=True): saved
  return {modules("adamss_A"), modules("adamss_B"), new_b};
}

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  int64_t subspaces = 0;
  at::Tensor scatter_index;  // int64 (out): the output row of each concatenated subspace row
};

class AdamssLayer final : public DictAdapterLayer {
 public:
  AdamssLayer(const LayerRequest& request, const Method& method) : DictAdapterLayer(request, method, containers()) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const c10::ScalarType previous = x.scalar_type();
    const at::Tensor weight = base_layer().weight();
    const c10::ScalarType dtype = weight.scalar_type();
    const at::Tensor xc = x.to(dtype);
    at::Tensor newx = xc;
    if (base_layer().bias().defined()) {
      std::vector<int64_t> shape = xc.sizes().vec();
      shape.back() = 1;
      newx = at::cat({xc, at::ones(shape, xc.options())}, -1);
    }
    at::Tensor result = base_forward(xc);
    for (const auto& entry : active) {
      const auto& record = static_cast<const Record&>(*entry);
      const at::Tensor projected = at::linear(newx, param(kNewB, record.name).to(dtype));
      std::vector<at::Tensor> chunks;
      for (int64_t i = 0; i < record.subspaces; ++i) {
        const at::Tensor a = subspace_tensor(*this, kA, record.name, i).to(dtype);
        const at::Tensor b = subspace_tensor(*this, kB, record.name, i).to(dtype);
        chunks.push_back(at::linear(at::linear(projected, a), b));
      }
      const at::Tensor delta = at::cat(chunks, -1);
      std::vector<int64_t> shape = delta.sizes().vec();
      shape.back() = result.size(-1);
      const at::Tensor scattered =
          at::zeros(shape, delta.options()).index_copy(-1, record.scatter_index.to(delta.device()), delta);
      result = result + scattered;
    }
    return result.to(previous);
  }

  bool merge_touches_bias() const override { return true; }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    const at::Tensor delta = full_delta(record, weight);
    const int64_t in = weight.size(1);
    at::Tensor new_bias = bias;
    if (bias.defined()) new_bias = bias + delta.select(1, in).to(bias.scalar_type());
    return {weight + delta.narrow(1, 0, in).to(weight.scalar_type()), new_bias};
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& record) const override {
    const at::Tensor delta = full_delta(record, weight);
    const int64_t in = weight.size(1);
    at::Tensor new_bias = bias;
    if (bias.defined()) new_bias = bias - delta.select(1, in).to(bias.scalar_type());
    return {weight - delta.narrow(1, 0, in).to(weight.scalar_type()), new_bias};
  }

 private:
  /// Python's get_delta_weight / get_delta_bias before the split: scatter(B_i A_i newB), (out, in [+ 1]), in
  /// float32 for CPU half precision.
  at::Tensor full_delta(const AdapterRecord& entry, const at::Tensor& weight) const {
    const auto& record = static_cast<const Record&>(entry);
    const c10::ScalarType dtype = weight.scalar_type();
    const bool half = dtype == at::kHalf || dtype == at::kBFloat16;
    const c10::ScalarType compute = weight.device().is_cpu() && half ? at::kFloat : dtype;
    const at::Tensor new_b = param(kNewB, record.name).to(weight.device(), compute);
    std::vector<at::Tensor> chunks;
    for (int64_t i = 0; i < record.subspaces; ++i) {
      const at::Tensor a = subspace_tensor(*this, kA, record.name, i).to(weight.device(), compute);
      const at::Tensor b = subspace_tensor(*this, kB, record.name, i).to(weight.device(), compute);
      chunks.push_back(at::matmul(at::matmul(b, a), new_b));
    }
    at::Tensor delta = at::zeros({weight.size(0), new_b.size(1)}, new_b.options());
    if (!chunks.empty()) delta.index_copy_(0, record.scatter_index.to(weight.device()), at::cat(chunks, 0));
    return delta;
  }
};

at::Tensor parameter_of(const torch::nn::Module& list, int64_t i) {
  const auto params = list.named_parameters(/*recurse=*/false);
  const at::Tensor* t = params.find(std::to_string(i));
  TORCH_INTERNAL_ASSERT(t, "AdaMSS ParameterList has no entry ", i);
  return *t;
}

class AdamssBuilder final : public BuilderOf<AdamssConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    const at::Tensor weight = base.weight().detach();
    const at::Tensor bias = base.bias().defined() ? base.bias().detach() : at::Tensor();
    if (weight.device().is_meta()) {
      throw ConfigError("AdaMSS needs the weight of layer '" + request.module_name +
                        "' (its subspaces come from its SVD); it is on the meta device.");
    }
    at::NoGradGuard no_grad;
    const c10::ScalarType dtype = weight.scalar_type();
    const int64_t out = weight.size(0);
    const at::Tensor w = (bias.defined() ? at::cat({weight, bias.unsqueeze(1)}, 1) : weight).to(at::kFloat);
    const int64_t cols = w.size(1);
    const int64_t r = config_.r();
    const int64_t q = std::min({r, out, cols});

    // slice_pca: the seeded SVD.
    at::Generator seeded = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(config_.random_seed()));
    const auto [u_full, s_full, v_full] = svd_lowrank(w, q, kNiter, seeded);
    const at::Tensor uu = u_full.narrow(1, 0, q).contiguous();        // (out, q)
    const at::Tensor vvt = v_full.narrow(1, 0, q).t().contiguous();   // (q, cols)

    // clustering_Z and seg_locations.
    const int64_t k = std::min(config_.num_subspaces(), out);
    const at::Tensor uu_cpu = uu.to(at::kCPU).contiguous();
    std::vector<float> data(uu_cpu.data_ptr<float>(), uu_cpu.data_ptr<float>() + uu_cpu.numel());
    const std::vector<int64_t> labels = kmeans_labels(data, out, q, k, kKMeansIterations, kKMeansSeed);
    std::vector<std::vector<int64_t>> rows(static_cast<size_t>(k));
    for (int64_t row = 0; row < out; ++row) rows[static_cast<size_t>(labels[static_cast<size_t>(row)])].push_back(row);
    for (int64_t i = 0; i < k; ++i) {
      if (rows[static_cast<size_t>(i)].empty()) {
        throw ConfigError("AdaMSS: k-means left subspace " + std::to_string(i) + " of layer '" + request.module_name +
                          "' empty (Python PEFT fails on such a layer too); use fewer num_subspaces.");
      }
    }

    auto record = std::make_shared<Record>(request.adapter_name);
    record->subspaces = k;
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    const bool init = materialised(options);
    auto a_list = std::make_shared<ParameterListImpl>();
    auto b_list = std::make_shared<ParameterListImpl>();
    at::Generator global = at::detail::getDefaultCPUGenerator();  // shares the global state
    std::vector<int64_t> scatter;
    for (int64_t i = 0; i < k; ++i) {
      const std::vector<int64_t>& seg = rows[static_cast<size_t>(i)];
      scatter.insert(scatter.end(), seg.begin(), seg.end());
      const auto n = static_cast<int64_t>(seg.size());
      const at::Tensor index = at::tensor(seg, at::TensorOptions().dtype(at::kLong)).to(uu.device());
      const at::Tensor sub = uu.index_select(0, index);  // (n, q)
      const at::Tensor gram = at::matmul(sub, sub.t());
      int64_t rank = 0;
      if (config_.use_dynamic_rank()) {
        const at::Tensor s = std::get<1>(svd_lowrank(gram, n, kNiter, global));
        const int64_t above = (s > s[0] * config_.svd_threshold()).sum().item<int64_t>();
        rank = std::min({above, config_.subspace_rank(), s.size(0)});
      } else {
        rank = std::min(n, config_.subspace_rank());
      }
      if (rank == 0) rank = 1;
      const at::Tensor u_gram = std::get<0>(svd_lowrank(gram, std::min(n, rank), kNiter, global));
      const at::Tensor qmat = std::get<0>(at::linalg_qr(at::matmul(sub.t(), u_gram.narrow(1, 0, rank)), "reduced"));
      const at::Tensor a = qmat.t().contiguous();
      if (a.size(0) != rank) {
        throw ConfigError("AdaMSS: subspace " + std::to_string(i) + " of layer '" + request.module_name + "' has rank " +
                          std::to_string(rank) + " but only " + std::to_string(q) +
                          " SVD directions (Python PEFT fails in the forward then); lower subspace_rank.");
      }
      at::Tensor b;
      if (config_.init_weights()) {
        b = at::zeros({n, rank}, at::TensorOptions().dtype(dtype).device(weight.device()));
      } else {
        b = at::randn({n, rank}, at::TensorOptions().dtype(dtype).device(weight.device())) * 0.01;
      }
      a_list->register_parameter(std::to_string(i), init ? a.to(options) : at::empty(a.sizes(), options));
      b_list->register_parameter(std::to_string(i), init ? b.to(options) : at::empty(b.sizes(), options));
    }
    record->scatter_index = at::tensor(scatter, at::TensorOptions().dtype(at::kLong));
    const at::Tensor new_b = vvt.to(adapter_options(base, false)).to(dtype);
    return prepare_dict_adapter<AdamssLayer>(request, method_,
                                             {record, {{kNewB, new_b}}, {{kA, a_list}, {kB, b_list}}});
  }
};

}  // namespace

std::vector<AdamssLayerRef> adamss_layers(const torch::nn::Module& model, const std::string& adapter) {
  std::vector<AdamssLayerRef> out;
  for (const AdaptedLayer& layer : adapted_layers(model)) {
    if (layer.adapters->peft_type() != AdamssConfig().peft_type() || !layer.adapters->has_adapter(adapter)) continue;
    out.push_back({layer.name, static_cast<DictAdapterLayer*>(layer.adapters)});
  }
  return out;
}

int64_t subspace_count(const DictAdapterLayer& layer, const std::string& adapter) {
  return static_cast<int64_t>(layer.module(kA, adapter)->named_parameters(/*recurse=*/false).size());
}

at::Tensor subspace_tensor(const DictAdapterLayer& layer, size_t container, const std::string& adapter, int64_t i) {
  return parameter_of(*layer.module(container, adapter), i);
}

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, AdamssConfig& config) {
  return std::make_unique<AdamssBuilder>(method, config);
}

}  // namespace peft::detail::adamss
