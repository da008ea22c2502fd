// GraLoRA (Python PEFT's tuners/gralora): the (out, in) update is a k x k grid of blocks. The input is cut
// into k slices of in/k features; slice n goes through its own A_n (in/k x r), whose r outputs are k groups
// of r/k; output block j gets, from every slice n, group j of A_n's outputs through rows n*(r/k).. of its
// own B_j (r x out/k). Block (j, n) of the update is thus B_j[group n]^T A_n[group j]^T, rank r/k each.
// Hybrid GraLoRA adds a plain LoRA pair of rank hybrid_r; everything is scaled by alpha / (r + hybrid_r).
//
// Python's tensors: gralora_A [k, in/k, r], gralora_B [k, r, out/k] (ParameterDicts), and for the hybrid
// pair the Linear modules gralora_A_general (in -> hybrid_r) and gralora_B_general (hybrid_r -> out), which
// are Identity without one.

#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <peft/error.h>
#include <peft/tuners/gralora/config.h>

#include "core/tensor_slots.h"
#include "tuners/common/dict_adapter_layer.h"
#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/gralora/layer.h"

namespace peft::detail::gralora {
namespace {

enum Containers : size_t { kA = 0, kB = 1, kGeneralA = 2, kGeneralB = 3, kDropout = 4 };

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  int64_t r = 0, k = 1, hybrid_r = 0;
  double scaling = 1;
  torch::nn::DropoutImpl* dropout = nullptr;  // owned by gralora_dropout; null for Identity
};

class GraloraLayer final : public DictAdapterLayer {
 public:
  GraloraLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method,
                         {{"gralora_A"}, {"gralora_B"}, {"gralora_A_general", true}, {"gralora_B_general", true},
                          {"gralora_dropout", true, false}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const c10::ScalarType previous = x.scalar_type();
    at::Tensor result = base_forward(x);
    const c10::ScalarType result_dtype = result.scalar_type();
    const int64_t in = base_layer().in_features;
    // Python handles (batch, features) and (batch, length, features); any leading shape works here.
    std::vector<int64_t> out_shape = x.sizes().vec();
    out_shape.back() = base_layer().out_features;
    for (const auto& r : active) {
      const auto& record = static_cast<const Record&>(*r);
      const at::Tensor& a = param(kA, record.name);
      const at::Tensor& b = param(kB, record.name);
      const int64_t k = record.k, group = record.r / k;
      const at::Tensor input = x.to(a.scalar_type());
      auto dropped = [&] { return record.dropout ? record.dropout->forward(input) : input; };
      const at::Tensor slices = dropped().reshape({-1, k, in / k});
      // [m, n, r]: slice n through A_n; regrouped as [m, j, (n, s)]: group j of every slice, for block j.
      const at::Tensor hidden = at::einsum("mni,nir->mnr", {slices, a})
                                    .reshape({-1, k, k, group})
                                    .permute({0, 2, 1, 3})
                                    .reshape({-1, k, record.r});
      const at::Tensor output = at::einsum("mjr,jro->mjo", {hidden, b}).reshape(out_shape);
      result = result + (output.to(result_dtype) * record.scaling);
      if (record.hybrid_r > 0) {
        // Its own draw of the dropout, as Python calls the dropout module again.
        const at::Tensor hybrid =
            at::linear(at::linear(dropped(), param(kGeneralA, record.name)), param(kGeneralB, record.name));
        result = result + hybrid.to(result_dtype) * record.scaling;
      }
    }
    return result.to(previous);
  }

  at::Tensor delta_weight(const AdapterRecord& r) const override {
    const auto& record = static_cast<const Record&>(r);
    at::Tensor a = param(kA, record.name), b = param(kB, record.name);
    // Python computes CPU half-precision updates in float32 and rounds the result.
    const c10::ScalarType dtype = a.scalar_type();
    const bool upcast = a.device().is_cpu() && (dtype == at::kHalf || dtype == at::kBFloat16);
    if (upcast) a = a.to(at::kFloat), b = b.to(at::kFloat);
    const int64_t k = record.k, group = record.r / k, in = base_layer().in_features, out = base_layer().out_features;
    // Block (j, n): sum over s of A_n[i, j*group + s] * B_j[n*group + s, o], laid out (out, in).
    at::Tensor delta = at::einsum("nijs,jnso->joni", {a.reshape({k, in / k, k, group}), b.reshape({k, k, group, out / k})})
                           .reshape({out, in});
    if (record.hybrid_r > 0) {
      at::Tensor general_a = param(kGeneralA, record.name), general_b = param(kGeneralB, record.name);
      if (upcast) general_a = general_a.to(at::kFloat), general_b = general_b.to(at::kFloat);
      delta = delta + at::matmul(general_b, general_a);
    }
    if (base_layer().fan_in_fan_out) delta = delta.t();
    delta = delta * record.scaling;
    return upcast ? delta.to(dtype) : delta;
  }
};

class GraloraBuilder final : public BuilderOf<GraloraConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    const int64_t r = config_.r(), k = config_.gralora_k(), hybrid_r = config_.hybrid_r();
    const int64_t in = base.in_features, out = base.out_features;
    if (in % k != 0) {
      throw ConfigError("in_features should be divisible by gralora_k, but got " + std::to_string(in) + " and " +
                        std::to_string(k) + " (layer '" + request.module_name + "')");
    }
    if (out % k != 0) {
      throw ConfigError("out_features should be divisible by gralora_k, but got " + std::to_string(out) + " and " +
                        std::to_string(k) + " (layer '" + request.module_name + "')");
    }
    auto record = std::make_shared<Record>(request.adapter_name);
    record->r = r;
    record->k = k;
    record->hybrid_r = hybrid_r;
    record->scaling = config_.alpha() / static_cast<double>(r + hybrid_r);

    std::shared_ptr<torch::nn::Module> dropout;
    if (config_.gralora_dropout() > 0) {
      auto module = std::make_shared<torch::nn::DropoutImpl>(torch::nn::DropoutOptions(config_.gralora_dropout()));
      record->dropout = module.get();
      dropout = module;
    } else {
      dropout = std::make_shared<torch::nn::IdentityImpl>();
    }

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    // Python's layout: A [k, in/k, r], B [k, r, out/k].
    const at::Tensor a = at::empty({k, in / k, r}, options);
    const at::Tensor b = at::empty({k, r, out / k}, options);
    std::shared_ptr<torch::nn::Module> general_a, general_b;
    std::shared_ptr<torch::nn::LinearImpl> linear_a, linear_b;
    if (hybrid_r > 0) {
      linear_a = make_linear(in, hybrid_r, false, options);
      linear_b = make_linear(hybrid_r, out, false, options);
      general_a = linear_a;
      general_b = linear_b;
    } else {
      general_a = std::make_shared<torch::nn::IdentityImpl>();
      general_b = std::make_shared<torch::nn::IdentityImpl>();
    }
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      initialise(a, b, linear_a, linear_b);
    }
    return prepare_dict_adapter<GraloraLayer>(
        request, method_,
        {record, {{kA, a}, {kB, b}}, {{kGeneralA, general_a}, {kGeneralB, general_b}, {kDropout, dropout}}});
  }

 private:
  /// Python's draws, in its order: per block A_n (r, in/k) then, without init_weights, B_j (out/k, r), each
  /// kaiming-uniform; then the hybrid Linears' own initialisation and the explicit one.
  void initialise(const at::Tensor& a, const at::Tensor& b, const std::shared_ptr<torch::nn::LinearImpl>& linear_a,
                  const std::shared_ptr<torch::nn::LinearImpl>& linear_b) const {
    const bool init = config_.init_weights();
    const int64_t k = a.size(0);
    for (int64_t n = 0; n < k; ++n) {
      // Drawn on the CPU in float32 in Python's (r, in/k) and (out/k, r) layouts, then stored transposed.
      at::Tensor block_a = at::empty({a.size(2), a.size(1)}, at::kFloat);
      kaiming_default(block_a);
      a[n].copy_(block_a.t());
      if (init) {
        b[n].zero_();
      } else {
        at::Tensor block_b = at::empty({b.size(2), b.size(1)}, at::kFloat);
        kaiming_default(block_b);
        b[n].copy_(block_b.t());
      }
    }
    if (!linear_a) return;
    at::Tensor weight_a = at::empty(linear_a->weight.sizes(), at::kFloat);
    at::Tensor weight_b = at::empty(linear_b->weight.sizes(), at::kFloat);
    kaiming_default(weight_a);  // the Linears' constructors
    kaiming_default(weight_b);
    kaiming_default(weight_a);
    if (init) {
      weight_b.zero_();
    } else {
      kaiming_default(weight_b);
    }
    linear_a->weight.copy_(weight_a);
    linear_b->weight.copy_(weight_b);
  }
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, GraloraConfig& config) {
  return std::make_unique<GraloraBuilder>(method, config);
}

}  // namespace peft::detail::gralora
