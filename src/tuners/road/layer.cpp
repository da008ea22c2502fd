// RoAd (Python PEFT's tuners/road): the layer output y = W x + b is rotated and scaled pairwise,
// y' = R y. The output is cut into groups of group_size; in each group element i pairs with element
// i + group_size/2 and the pair (u, v) becomes (f_i u - s_i v, s_j u + f_j v), where f = alpha cos(theta) and
// s = alpha sin(theta) per element (the "columns" of the 2x2 blocks of R). Only f and s are ever formed, never
// the (out, out) matrix: merging writes R W and R b, unmerging applies the blocks' inverse,
// (f_j u' + s_i v', -s_j u' + f_i v') / (f_i f_j + s_i s_j).

#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>

#include <peft/error.h>
#include <peft/tuners/road/config.h>

#include "tuners/common/pending_adapter.h"
#include "tuners/road/layer.h"

namespace peft::detail::road {
namespace {

enum class Variant { Road1, Road2, Road4 };

Variant parse_variant(const std::string& name) {
  if (name == "road_1") return Variant::Road1;
  if (name == "road_2") return Variant::Road2;
  if (name == "road_4") return Variant::Road4;
  throw ConfigError("Unsupported variant " + name + " for RoadLayer. Supported variants are road_1, road_2, and road_4.");
}

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  Variant variant = Variant::Road1;
  int64_t group_size = 0;
};

/// The diagonal (first) and off-diagonal (second) column of every element's 2x2 block, each of length out.
std::pair<at::Tensor, at::Tensor> columns(const Record& record, const at::Tensor& theta, const at::Tensor& alpha) {
  const int64_t g = record.group_size;
  switch (record.variant) {
    case Variant::Road1: {
      // One angle and scale per pair: group k's g/2 values serve both of its halves.
      const at::Tensor t = theta.reshape({-1, g / 2}).repeat_interleave(2, 0).flatten();
      const at::Tensor a = alpha.reshape({-1, g / 2}).repeat_interleave(2, 0).flatten();
      return {a * t.cos(), a * t.sin()};
    }
    case Variant::Road2:
      return {alpha * theta.cos(), alpha * theta.sin()};
    case Variant::Road4: {
      // Per group: g angles / scales for the first column, then g for the second.
      const at::Tensor t = theta.reshape({-1, 2, g});
      const at::Tensor a = alpha.reshape({-1, 2, g});
      return {a.select(1, 0).flatten() * t.select(1, 0).cos().flatten(),
              a.select(1, 1).flatten() * t.select(1, 1).sin().flatten()};
    }
  }
  TORCH_INTERNAL_ASSERT(false, "unknown RoAd variant");
}

/// R applied to the last dimension of x.
at::Tensor rotate(const at::Tensor& x, const at::Tensor& first, const at::Tensor& second, int64_t group_size) {
  const at::Tensor grouped = x.reshape({-1, 2, group_size / 2});
  const at::Tensor rotated_half = at::stack({-grouped.select(1, 1), grouped.select(1, 0)}, 1).reshape(x.sizes());
  return x * first + rotated_half * second;
}

/// The columns of R's inverse (its 2x2 blocks inverted).
std::pair<at::Tensor, at::Tensor> inverse_columns(const at::Tensor& first, const at::Tensor& second, int64_t group_size) {
  auto partner = [&](const at::Tensor& t) { return t.reshape({-1, 2, group_size / 2}).flip({1}).reshape({-1}); };
  const at::Tensor det = first * partner(first) + second * partner(second);
  return {partner(first) / det, -second / det};
}

class RoadLayer final : public DictAdapterLayer {
 public:
  RoadLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, {{"road_theta"}, {"road_alpha"}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    at::Tensor result = base_forward(x);
    const c10::ScalarType result_dtype = result.scalar_type();
    for (const auto& r : active) result = apply(static_cast<const Record&>(*r), result);
    return result.to(result_dtype);
  }

  bool supports_per_sample() const override { return true; }

  at::Tensor forward_rows(torch::nn::Module&, const at::Tensor&, const at::Tensor& result,
                          const AdapterRecord& record) override {
    return apply(static_cast<const Record&>(record), result);
  }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    const auto& road = static_cast<const Record&>(record);
    const c10::ScalarType dtype = compute_dtype(weight);
    auto [first, second] = columns(road, param(0, road.name).detach(), param(1, road.name).detach());
    return transform(weight, bias, first.to(dtype), second.to(dtype), road.group_size);
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& record) const override {
    const auto& road = static_cast<const Record&>(record);
    // As Python inverts R: in float32.
    auto [first, second] = columns(road, param(0, road.name).detach().to(at::kFloat), param(1, road.name).detach().to(at::kFloat));
    auto [inv_first, inv_second] = inverse_columns(first, second, road.group_size);
    const c10::ScalarType dtype = compute_dtype(weight);
    return transform(weight, bias, inv_first.to(dtype), inv_second.to(dtype), road.group_size);
  }

  bool merge_touches_bias() const override { return true; }

 private:
  at::Tensor apply(const Record& record, const at::Tensor& y) const {
    const at::Tensor& theta = param(0, record.name);
    const at::Tensor& alpha = param(1, record.name);
    auto [first, second] = columns(record, theta, alpha);
    return rotate(y.to(theta.scalar_type()), first, second, record.group_size);
  }

  static c10::ScalarType compute_dtype(const at::Tensor& weight) {
    const c10::ScalarType t = weight.scalar_type();
    return t == at::kHalf || t == at::kBFloat16 ? at::kFloat : t;
  }

  /// (R W, R b) for the R with these columns, in the weight's dtype. R acts on W's output dimension (rows).
  static std::pair<at::Tensor, at::Tensor> transform(const at::Tensor& weight, const at::Tensor& bias,
                                                     const at::Tensor& first, const at::Tensor& second, int64_t group_size) {
    const c10::ScalarType dtype = first.scalar_type();
    at::Tensor new_weight = rotate(weight.to(dtype).t(), first, second, group_size).t().to(weight.scalar_type());
    at::Tensor new_bias = bias;
    if (bias.defined()) new_bias = rotate(bias.to(dtype), first, second, group_size).to(bias.scalar_type());
    return {new_weight, new_bias};
  }
};

class RoadBuilder final : public BuilderOf<RoadConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    const int64_t group_size = config_.group_size();
    if (base.out_features % group_size != 0) {
      throw ConfigError("The out_features of the base layer must be divisible by group_size (" + std::to_string(group_size) +
                        ") when using RoadLayer. (layer '" + request.module_name + "', out_features " +
                        std::to_string(base.out_features) + ")");
    }
    auto record = std::make_shared<Record>(request.adapter_name);
    record->variant = parse_variant(config_.variant());
    record->group_size = group_size;
    const int64_t size = record->variant == Variant::Road1   ? base.out_features / 2
                         : record->variant == Variant::Road2 ? base.out_features
                                                             : base.out_features * 2;
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor theta = at::empty({size}, options), alpha = at::empty({size}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      if (config_.init_weights()) {
        theta.zero_();
        alpha.fill_(1.0);
      } else {
        theta.normal_(0.0, 0.5);
        alpha.normal_(1.0, 0.5);
      }
    }
    DictAdapterLayer::NewAdapter adapter{record, {{0, theta}, {1, alpha}}, {}};
    return prepare_dict_adapter<RoadLayer>(request, method_, std::move(adapter));
  }
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, RoadConfig& config) {
  return std::make_unique<RoadBuilder>(method, config);
}

}  // namespace peft::detail::road
