// OFT (Python PEFT's tuners/oft): a block-diagonal orthogonal R rotates the input of a Linear / Conv2d layer
// (y = W (x R)), or the output rows of an Embedding. Merging folds R into the weight: W R^T, or W R for
// embeddings.

#include <ATen/ops/col2im.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_inv.h>
#include <ATen/ops/mm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <peft/error.h>
#include <peft/tuners/oft/config.h>

#include "tuners/common/conv_functional.h"
#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/oft/layer.h"
#include "tuners/oft/rotation.h"

namespace peft::detail::oft {
namespace {

TORCH_MODULE(RotationModule);

const std::vector<DictAdapterLayer::Container>& containers(bool embedding) {
  static const std::vector<DictAdapterLayer::Container> layer{{"oft_R", true}};
  static const std::vector<DictAdapterLayer::Container> embed{{"oft_embedding_R", true}};
  return embedding ? embed : layer;
}

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  RotationSpec spec;
};

class OFTLayer final : public DictAdapterLayer {
 public:
  OFTLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, containers(request.base.kind == LayerKind::Embedding)) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const c10::ScalarType previous = x.scalar_type();
    if (kind() == LayerKind::Embedding) {
      at::Tensor result = base_forward(x);
      const c10::ScalarType out_dtype = result.scalar_type();
      for (const auto& record : active) result = rotate_with(*record, result);
      return result.to(out_dtype);
    }
    at::Tensor input = x;
    for (const auto& record : active) {
      input = kind() == LayerKind::Conv2d ? rotate_patches(*record, input) : rotate_with(*record, input);
    }
    return base_forward(input.to(previous)).to(previous);
  }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    const at::Tensor r = matrix(record);
    if (kind() == LayerKind::Embedding) return {at::mm(weight.to(r.scalar_type()), r).to(weight.scalar_type()), bias};
    const at::Tensor flat = weight.reshape({weight.size(0), -1}).to(r.scalar_type());
    return {at::mm(r, flat.t()).t().reshape(weight.sizes()).to(weight.scalar_type()), bias};
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& record) const override {
    at::Tensor r = matrix(record);
    const c10::ScalarType dtype = r.scalar_type();
    const at::Tensor inverse = at::linalg_inv(r.to(at::kFloat)).to(dtype);
    if (kind() == LayerKind::Embedding) return {at::mm(weight.to(dtype), inverse).to(weight.scalar_type()), bias};
    const at::Tensor flat = weight.reshape({weight.size(0), -1}).to(dtype);
    return {at::mm(inverse, flat.t()).t().reshape(weight.sizes()).to(weight.scalar_type()), bias};
  }

 private:
  const RotationSpec& spec(const AdapterRecord& record) const { return static_cast<const Record&>(record).spec; }

  at::Tensor blocks(const AdapterRecord& record) const {
    const at::Tensor& weight = param(0, record.name);
    return rotation_blocks(weight, spec(record));
  }

  at::Tensor rotate_with(const AdapterRecord& record, const at::Tensor& x) const {
    const at::Tensor& weight = param(0, record.name);
    const c10::ScalarType dtype = x.scalar_type();
    return rotate(x.to(weight.scalar_type()), blocks(record), spec(record)).to(dtype);
  }

  // Conv2d: Python PEFT rotates every kernel-sized patch of the input (stride 1, no padding) and folds the
  // patches back, summing where they overlap.
  at::Tensor rotate_patches(const AdapterRecord& record, const at::Tensor& x) const {
    const at::Tensor& weight = param(0, record.name);
    const c10::ScalarType dtype = x.scalar_type();
    const std::vector<int64_t> kernel = conv_geometry(*base_layer().module, kind()).kernel;
    const int64_t kh = kernel[0], kw = kernel[1];
    const int64_t batch = x.size(0), channels = x.size(1), h = x.size(2), w = x.size(3);
    const int64_t oh = h - kh + 1, ow = w - kw + 1;
    const at::Tensor patches = x.to(weight.scalar_type())
                                   .unfold(2, kh, 1)
                                   .unfold(3, kw, 1)
                                   .permute({0, 2, 3, 1, 4, 5})
                                   .contiguous()
                                   .view({batch * oh * ow, -1});
    const at::Tensor rotated = rotate(patches, blocks(record), spec(record));
    const at::Tensor columns = rotated.view({batch, oh, ow, channels, kh, kw})
                                   .permute({0, 3, 1, 2, 4, 5})
                                   .contiguous()
                                   .view({batch, channels * kh * kw, oh * ow});
    return at::col2im(columns, {h, w}, {kh, kw}, {1, 1}, {0, 0}, {1, 1}).to(dtype);
  }

  // The full rotation; computed in float32 for half-precision CPU weights, as Python does.
  at::Tensor matrix(const AdapterRecord& record) const {
    const at::Tensor& weight = param(0, record.name);
    const bool upcast = weight.is_cpu() && (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16);
    if (!upcast) return block_diagonal(blocks(record), spec(record));
    RotationSpec s = spec(record);
    const at::Tensor w = weight.to(at::kFloat);
    const at::Tensor out = block_diagonal(rotation_blocks(w, s), s).to(weight.scalar_type());
    if (s.coft) {
      at::NoGradGuard no_grad;
      weight.copy_(w);
    }
    return out;
  }
};

class OFTBuilder final : public BuilderOf<OFTConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    int64_t features = 0;
    switch (base.kind) {
      case LayerKind::Linear:
        align_fan_in_fan_out(base, config_.fan_in_fan_out());
        features = base.in_features;
        break;
      case LayerKind::Embedding: features = base.out_features; break;  // embedding_dim
      case LayerKind::Conv2d: {
        const auto& conv = dynamic_cast<const torch::nn::Conv2dImpl&>(*base.module);
        if ((*conv.options.dilation())[0] > 1) throw UnsupportedLayerError("Conv2d with dilation > 1 is not supported by OFT.");
        features = ungrouped_conv_fan_in(request, method_);
        break;
      }
      default:
        break;  // Method::layer_kinds() lets no other kind through
    }
    RotationSpec spec;
    int64_t r = config_.r(), block_size = config_.oft_block_size();
    if (r == 0) {
      if (features % block_size != 0 || block_size > features) {
        const int64_t old = block_size;
        block_size = adjust_to_divisor(features, block_size);
        TORCH_WARN("Invalid `oft_block_size` (", old, ")! Adjusted `oft_block_size` to (", block_size, ").");
      }
      r = features / block_size;
    } else {
      if (features % r != 0 || r > features) {
        const int64_t old = r;
        r = adjust_to_divisor(features, r);
        TORCH_WARN("Invalid `r` (", old, ")! Adjusted `r` to (", r, ").");
      }
      block_size = features / r;
    }
    spec.blocks = r;
    spec.block_size = block_size;
    spec.block_share = config_.block_share();
    spec.coft = config_.coft();
    spec.eps = config_.eps();
    spec.use_cayley_neumann = config_.use_cayley_neumann();
    spec.neumann_terms = config_.num_cayley_neumann_terms();

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor weight = at::empty({spec.block_share ? 1 : r, block_size * (block_size - 1) / 2}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      if (config_.init_weights()) {
        weight.zero_();
      } else {
        weight.normal_(0.0, 0.1);
      }
    }
    auto record = std::make_shared<Record>(request.adapter_name);
    record->spec = spec;
    DictAdapterLayer::NewAdapter adapter;
    adapter.record = record;
    adapter.modules.emplace_back(0, RotationModule(weight).ptr());
    return prepare_dict_adapter<OFTLayer>(request, method_, std::move(adapter));
  }

};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, OFTConfig& config) {
  return std::make_unique<OFTBuilder>(method, config);
}
}  // namespace peft::detail::oft
