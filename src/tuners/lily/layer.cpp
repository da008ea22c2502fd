// Lily (Python PEFT's tuners/lily): y = W x + b + scaling * (h Bmix), h = A x, where the router turns h into
// softmax weights over num_B experts, averages them over every token of the batch, and Bmix is the
// weighted sum of the experts (r x out each, stored together as one num_B*r x out Linear weight). A and B are
// modules shared between layers (plan_sharing); the router is each layer's own.

#include <unordered_map>

#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/softmax.h>
#include <c10/util/Exception.h>

#include <peft/tuners/lily/config.h>

#include "core/tensor_slots.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/lily/layer.h"
#include "tuners/lily/sharing.h"

namespace peft::detail::lily {
namespace {

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  int64_t num_B = 0;
  double scaling = 1;
};

class LilyLayer final : public DictAdapterLayer {
 public:
  LilyLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, {{"lily_A", true}, {"lily_B", true}, {"lily_router", true}}) {}

 protected:
  // No merge_step: Python cannot merge Lily (the router's weights depend on the batch), so the default
  // delta_weight refuses with a MergeError.
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    at::Tensor result = base_forward(x);
    const c10::ScalarType result_dtype = result.scalar_type();
    at::Tensor input = x;
    for (const auto& r : active) {
      const auto& record = static_cast<const Record&>(*r);
      const at::Tensor& a = param(0, record.name);
      const at::Tensor& b = param(1, record.name);
      const at::Tensor& router = param(2, record.name);
      // Python casts its x for this adapter and keeps it cast for the next one.
      if (input.scalar_type() != a.scalar_type()) input = input.to(a.scalar_type());
      const at::Tensor hidden = at::linear(input, a);
      const at::Tensor probabilities = at::softmax(at::linear(hidden, router), -1);
      const at::Tensor expert_weights = probabilities.reshape({-1, record.num_B}).mean(0);
      const at::Tensor experts = b.reshape({record.num_B, -1, b.size(1)});
      const at::Tensor mixed = at::einsum("e,eio->io", {expert_weights, experts});
      result = result + (at::matmul(hidden, mixed) * record.scaling).to(result_dtype);
    }
    return result;
  }
};

class LilyBuilder final : public BuilderOf<const LilyConfig> {
 public:
  using BuilderOf::BuilderOf;

  void plan(const std::vector<LayerRequest>& requests) override {
    const std::vector<SharedWith> sharing = plan_sharing(requests, config_.target_modules(), config_.stride_A());
    const int64_t r = config_.r();
    std::vector<Shared> made;
    for (size_t i = 0; i < requests.size(); ++i) {
      const BaseLayer& base = requests[i].base;
      const at::TensorOptions options = adapter_options(base, requests[i].low_cpu_mem_usage);
      Shared shared;
      // Owners come first in model order, so their modules exist when the layers sharing them are reached.
      shared.A = sharing[i].a_owner == i ? make_linear(base.in_features, r, false, options) : made[sharing[i].a_owner].A;
      shared.B = sharing[i].b_owner == i ? make_linear(base.out_features, config_.num_B() * r, false, options)
                                         : made[sharing[i].b_owner].B;
      shared.owns_A = sharing[i].a_owner == i;
      shared.owns_B = sharing[i].b_owner == i;
      made.push_back(shared);
      by_layer_[requests[i].module_name] = shared;
    }
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    auto found = by_layer_.find(request.module_name);
    TORCH_INTERNAL_ASSERT(found != by_layer_.end(), "Lily: layer '", request.module_name, "' was not planned");
    const Shared& shared = found->second;
    const BaseLayer& base = request.base;
    const int64_t r = config_.r(), num_B = config_.num_B();
    auto record = std::make_shared<Record>(request.adapter_name);
    record->num_B = num_B;
    record->scaling = config_.scaling();

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    auto router = make_linear(r, num_B, false, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      // Python gives every layer its own nn.Linear A, B and router (each constructor draws kaiming values),
      // draws A and the router again (and B, unless init_weights), and only after the injection points the
      // layers of a group at the first one's A and B. The same draws in the same order, into the shared
      // modules where this layer owns them and into scratch tensors otherwise, give Python's values for a seed.
      const at::Tensor a = draw_target(shared.A->weight, shared.owns_A, options);
      const at::Tensor b = draw_target(shared.B->weight, shared.owns_B, options);
      kaiming_default(a);
      kaiming_default(b);
      kaiming_default(router->weight);
      kaiming_default(a);
      kaiming_default(router->weight);
      if (config_.init_weights()) {
        b.zero_();
      } else {
        kaiming_default(b);
      }
    }
    return prepare_dict_adapter<LilyLayer>(request, method_, {record, {}, {{0, shared.A}, {1, shared.B}, {2, router}}});
  }

 private:
  // Where this layer's draws for a shared weight go: into it when the layer owns it (and it holds values),
  // otherwise into a scratch tensor of its shape.
  static at::Tensor draw_target(const at::Tensor& weight, bool owns, const at::TensorOptions& options) {
    return owns && !is_meta(weight) ? weight : at::empty(weight.sizes(), options);
  }

  struct Shared {
    std::shared_ptr<torch::nn::LinearImpl> A, B;
    bool owns_A = false, owns_B = false;
  };
  std::unordered_map<std::string, Shared> by_layer_;
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, LilyConfig& config) {
  return std::make_unique<LilyBuilder>(method, config);
}

}  // namespace peft::detail::lily
