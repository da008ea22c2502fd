// SHiRA (Python PEFT's tuners/shira): r * (in + out) trained entries of the weight at positions a mask fixes.
// The positions are saved with the adapter (shira_indices, int32, shape (2, n): rows then columns, in the
// mask's row-major order), so a checkpoint made with any mask loads. As in Python, the forward runs the
// layer's linear map with W + delta itself rather than through the layer's forward.

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/randn.h>

#include <peft/error.h>
#include <peft/tuners/shira/config.h>

#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/shira/layer.h"

namespace peft::detail::shira {
namespace {

constexpr size_t kWeight = 0, kIndices = 1;

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  /// No mask at injection (a mask_type other than "random" and no mask_fn): the indices are a placeholder
  /// of -1 until a checkpoint provides them.
  bool awaits_indices = false;
};

DictAdapterLayer::Container indices_container() {
  DictAdapterLayer::Container container{"shira_indices"};
  container.holds_buffers = true;
  return container;
}

class ShiraLayer final : public DictAdapterLayer {
 public:
  ShiraLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, {{"shira_weight"}, indices_container()}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active, BaseForward) override {
    at::Tensor weight = base_layer().weight().clone();
    for (const auto& record : active) {
      require_indices(*record, /*merging=*/false);
      add_entries(weight, *record, false);
    }
    return at::linear(x, weight, base_layer().bias());
  }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& record) const override {
    require_indices(record, /*merging=*/true);
    at::Tensor merged = weight.clone();
    add_entries(merged, record, false);
    return {merged, bias};
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& record) const override {
    at::Tensor unmerged = weight.clone();
    add_entries(unmerged, record, true);
    return {unmerged, bias};
  }

 private:
  /// weight[rows, cols] += values (or -= with `subtract`), in place: Python's dense += sparse, entry by entry.
  void add_entries(at::Tensor& weight, const AdapterRecord& record, bool subtract) const {
    const at::Tensor indices = param(kIndices, record.name).to(weight.device(), at::kLong);
    at::Tensor values = param(kWeight, record.name).to(weight.scalar_type());
    if (subtract) values = -values;
    weight.index_put_({indices[0], indices[1]}, values, /*accumulate=*/true);
  }

  /// Refuses an adapter whose placeholder indices were never replaced by a checkpoint's.
  void require_indices(const AdapterRecord& record, bool merging) const {
    if (!static_cast<const Record&>(record).awaits_indices) return;
    if (!(param(kIndices, record.name) < 0).any().item<bool>()) return;
    const std::string message = "The SHiRA adapter '" + record.name + "' of layer '" + module_name() +
                                "' has no mask: its mask_type is not \"random\" and ShiraConfig::mask_fn was not "
                                "set, so its shira_indices must come from a checkpoint (load_adapter / "
                                "set_peft_model_state_dict).";
    if (merging) throw MergeError(message);
    throw Error(message);
  }
};

class ShiraBuilder final : public BuilderOf<ShiraConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    const int64_t r = config_.r(), in = base.in_features, out = base.out_features;
    const int64_t count = r * (in + out);
    if (count > in * out) {
      throw ConfigError("The set rank " + std::to_string(r) + " results in more shira params than the total number of "
                        "params in the base layer " + std::to_string(in * out) + " and this is not allowed. (layer '" +
                        request.module_name + "')");
    }
    auto record = std::make_shared<Record>(request.adapter_name);
    // The mask first, as in Python: a mask function may draw from the global generator as well.
    const at::Tensor indices = mask_indices(request, count, *record);

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor weight = at::empty({count}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      if (config_.init_weights()) {
        weight.zero_();
      } else {
        weight.copy_(at::randn({count}));  // drawn in float32, then cast, as Python's torch.randn
      }
    }
    return prepare_dict_adapter<ShiraLayer>(request, method_, {record, {{kWeight, weight}, {kIndices, indices}}, {}});
  }

 private:
  /// The (2, count) int32 positions of the mask's ones, on the layer's device (the CPU for a layer on the
  /// meta device, so they keep their values).
  at::Tensor mask_indices(const LayerRequest& request, int64_t count, Record& record) const {
    const BaseLayer& base = request.base;
    const at::Device weight_device = base.weight().device();
    const at::Device device = weight_device.is_meta() ? at::Device(at::kCPU) : weight_device;
    ShiraMaskFn mask_fn = config_.mask_fn();
    if (!mask_fn && config_.mask_type() == "random") {
      mask_fn = [seed = config_.random_seed()](const torch::nn::Module& layer, int64_t r) {
        return shira_random_mask(layer, r, seed);
      };
    }
    if (!mask_fn) {
      record.awaits_indices = true;
      return at::full({2, count}, -1, at::TensorOptions().dtype(at::kInt).device(device));
    }
    const at::Tensor mask = mask_fn(*base.module, config_.r());
    const std::vector<int64_t> shape{base.out_features, base.in_features};
    if (!mask.defined() || mask.sizes() != at::IntArrayRef(shape)) {
      throw ConfigError("The SHiRA mask function returned a mask of shape " +
                        (mask.defined() ? c10::str(mask.sizes()) : std::string("(undefined)")) + " for layer '" +
                        request.module_name + "', whose weight has shape " + c10::str(at::IntArrayRef(shape)) + ".");
    }
    // torch.where(mask == 1.0): the ones in row-major order.
    const at::Tensor positions = at::nonzero(mask == 1);
    if (positions.size(0) != count) {
      throw ConfigError("The SHiRA indices and weights are not the same dimensions for adapter " + request.adapter_name +
                        " in layer " + short_repr(*base.module) + " ('" + request.module_name + "': the mask has " +
                        std::to_string(positions.size(0)) + " ones, r * (in + out) is " + std::to_string(count) + ")");
    }
    return positions.t().to(device, at::kInt).contiguous();
  }
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, ShiraConfig& config) {
  return std::make_unique<ShiraBuilder>(method, config);
}

}  // namespace peft::detail::shira
