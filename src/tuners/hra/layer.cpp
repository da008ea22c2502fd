// HRA (Python PEFT's tuners/hra): W' = W H, H = (I - 2 u1 u1^T) ... (I - 2 ur ur^T) with normalised u_i
// (or, with apply_GS, one reflection I - 2 U U^T of the Gram-Schmidt-orthonormalised U).

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/zeros.h>

#include <peft/error.h>
#include <peft/tuners/hra/config.h>

#include "core/tensor_slots.h"
#include "tuners/common/conv_functional.h"
#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/hra/layer.h"

namespace peft::detail::hra {
namespace {

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  int64_t r = 0;
  bool apply_gs = false;
};

class HRALayer final : public DictAdapterLayer {
 public:
  HRALayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, {{"hra_u"}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward) override {
    const c10::ScalarType previous = x.scalar_type();
    at::Tensor transform;
    for (const auto& record : active) {
      const at::Tensor h = reflections(*record, false);
      transform = transform.defined() ? at::mm(transform.to(h.scalar_type()), h) : h;
    }
    const at::Tensor weight = base_layer().weight().detach();
    const at::Tensor new_weight = at::mm(flat(weight).to(transform.scalar_type()), transform);
    at::Tensor bias = base_layer().bias();
    if (bias.defined()) bias = bias.to(new_weight.scalar_type());
    const at::Tensor input = x.to(new_weight.scalar_type());
    at::Tensor result;
    if (base_layer().is_conv()) {
      result = conv_like(base, kind(), input, new_weight.view(weight.sizes()));
      if (bias.defined()) result = result + bias.view({1, -1, 1, 1});
    } else {
      result = at::linear(input, new_weight, bias);
    }
    return result.to(previous);
  }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    const at::Tensor h = reflections(record, false);
    return {at::mm(flat(weight).to(h.scalar_type()), h).view(weight.sizes()).to(weight.scalar_type()), bias};
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& record) const override {
    // Each reflection is its own inverse, so the product in reverse order undoes it.
    const at::Tensor h = reflections(record, true);
    return {at::mm(flat(weight).to(h.scalar_type()), h).view(weight.sizes()).to(weight.scalar_type()), bias};
  }

 private:
  static at::Tensor flat(const at::Tensor& weight) { return weight.reshape({weight.size(0), -1}); }

  at::Tensor reflections(const AdapterRecord& r, bool reverse) const {
    const auto& record = static_cast<const Record&>(r);
    const at::Tensor& u = param(0, record.name);
    const int64_t d = u.size(0);
    const at::TensorOptions options = u.options();
    if (record.apply_gs) {
      std::vector<at::Tensor> basis{(u.select(1, 0) / u.select(1, 0).norm()).view({-1, 1})};
      for (int64_t i = 1; i < record.r; ++i) {
        at::Tensor ui = u.select(1, i).view({-1, 1});
        for (int64_t j = 0; j < i; ++j) ui = ui - at::mm(basis[j].t(), ui) * basis[j];
        basis.push_back((ui / ui.norm()).view({-1, 1}));
      }
      const at::Tensor w = at::cat(basis, 1);
      return at::eye(d, options) - 2 * at::mm(w, w.t());
    }
    const at::Tensor normalised = u / u.norm(2, {0});
    at::Tensor h = at::eye(d, options);
    for (int64_t k = 0; k < record.r; ++k) {
      const int64_t i = reverse ? record.r - 1 - k : k;
      const at::Tensor ui = normalised.select(1, i).view({-1, 1});
      h = h - 2 * at::mm(at::mm(h, ui), ui.t());
    }
    return h;
  }
};

class HRABuilder final : public BuilderOf<const HRAConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    const int64_t rows = base.kind == LayerKind::Conv2d ? ungrouped_conv_fan_in(request, method_) : base.in_features;
    const int64_t r = config_.r();
    auto record = std::make_shared<Record>(request.adapter_name);
    record->r = r;
    record->apply_gs = config_.apply_GS();
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor u = at::empty({rows, r}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      if (config_.init_weights() && r % 2 == 0) {
        // Equal neighbouring vectors: their reflections cancel, so the adapter starts as the identity.
        at::Tensor half = at::zeros({rows, r / 2}, options);
        kaiming_default(half);
        u.copy_(at::repeat_interleave(half, 2, 1));
      } else {
        if (config_.init_weights()) TORCH_WARN("The symmetric initialization can NOT be performed when r is odd!");
        kaiming_default(u);
      }
    }
    return prepare_dict_adapter<HRALayer>(request, method_, {record, {{0, u}}, {}});
  }

};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const HRAConfig& config) {
  return std::make_unique<HRABuilder>(method, config);
}

}  // namespace peft::detail::hra
