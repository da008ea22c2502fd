// FourierFT (Python PEFT's tuners/fourierft): dW = Re(ifft2(S)) * scaling, where S is zero except for
// n_frequency learned entries at positions drawn by torch.randperm from random_loc_seed.

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/fft_ifft2.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/real.h>
#include <ATen/ops/zeros.h>

#include <peft/error.h>
#include <peft/tuners/fourierft/config.h>

#include "core/matching.h"
#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/fourierft/layer.h"

namespace peft::detail::fourierft {
namespace {

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  double scaling = 0;
  at::Tensor rows, cols;  // positions of the learned coefficients (int64, CPU)
};

class FourierFTLayer final : public DictAdapterLayer {
 public:
  FourierFTLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, {{"fourierft_spectrum"}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const c10::ScalarType previous = x.scalar_type();
    at::Tensor result = base_forward(x);
    for (const auto& record : active) {
      const at::Tensor delta = dense_delta(static_cast<const Record&>(*record));
      result = result + at::linear(x.to(delta.scalar_type()), delta);
    }
    return result.to(previous);
  }

  at::Tensor delta_weight(const AdapterRecord& record) const override {
    const at::Tensor delta = dense_delta(static_cast<const Record&>(record));
    return base_layer().fan_in_fan_out ? delta.t() : delta;
  }

 private:
  /// (out, in) update.
  at::Tensor dense_delta(const Record& record) const {
    const at::Tensor& spectrum = param(0, record.name);
    const at::Device device = spectrum.device();
    at::Tensor dense = at::zeros({base_layer().out_features, base_layer().in_features},
                                 spectrum.options().dtype(at::kFloat));
    dense.index_put_({record.rows.to(device), record.cols.to(device)}, spectrum.to(at::kFloat));
    return (at::real(at::fft_ifft2(dense)) * record.scaling).to(spectrum.scalar_type());
  }
};

class FourierFTBuilder final : public BuilderOf<FourierFTConfig> {
 public:
  FourierFTBuilder(const Method& method, FourierFTConfig& config)
      : BuilderOf(method, config), n_frequencies_(config.n_frequency_pattern(), "n_frequency_pattern") {}

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    align_fan_in_fan_out(base, config_.fan_in_fan_out());
    const int64_t n = n_frequencies_.lookup(request.module_name, config_.n_frequency());
    const int64_t in = base.in_features, out = base.out_features;
    if (n > in * out) {
      throw ConfigError("`n_frequency` should be less than or equal to the product of the input and output dimensions "
                        "but the value passed is " + std::to_string(n) + " and the product is " +
                        std::to_string(in * out) + " (layer '" + request.module_name + "')");
    }
    auto record = std::make_shared<Record>(request.adapter_name);
    record->scaling = config_.scaling();
    // The same draw as Python: randperm(out*in) on a CPU generator seeded with random_loc_seed.
    at::Generator generator = at::detail::createCPUGenerator(static_cast<uint64_t>(config_.random_loc_seed()));
    const at::Tensor flat = at::randperm(out * in, generator, at::TensorOptions().dtype(at::kLong)).narrow(0, 0, n);
    record->rows = flat.div(in, "floor");
    record->cols = flat.remainder(in);

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor spectrum = at::empty({n}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      if (config_.init_weights()) {
        spectrum.zero_();
      } else {
        spectrum.normal_();
      }
    }
    return prepare_dict_adapter<FourierFTLayer>(request, method_, {record, {{0, spectrum}}, {}});
  }

 private:
  PatternLookup<int64_t> n_frequencies_;
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, FourierFTConfig& config) {
  return std::make_unique<FourierFTBuilder>(method, config);
}
}  // namespace peft::detail::fourierft
