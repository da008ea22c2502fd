// FourierFT (Python PEFT's tuners/fourierft): dW = Re(ifft2(S)) * scaling, where S is zero except for
// n_frequency learned entries at positions drawn by torch.randperm from random_loc_seed.

#include <tuple>

#include <ATen/ops/empty.h>
#include <ATen/ops/fft_ifft2.h>
#include <ATen/ops/real.h>
#include <ATen/ops/zeros.h>

#include <peft/error.h>
#include <peft/tuners/fourierft/config.h>

#include "core/matching.h"
#include "tuners/common/dense_update_layer.h"
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

class FourierFTLayer final : public DenseUpdateLayer {
 public:
  FourierFTLayer(const LayerRequest& request, const Method& method)
      : DenseUpdateLayer(request, method, {{"fourierft_spectrum"}}) {}

 protected:
  at::Tensor dense_update(const AdapterRecord& adapter) const override {
    const auto& record = static_cast<const Record&>(adapter);
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
    check_n_frequency_fits(n, in, out, request.module_name);
    auto record = std::make_shared<Record>(request.adapter_name);
    record->scaling = config_.scaling();
    std::tie(record->rows, record->cols) = seeded_positions(out, in, n, config_.random_loc_seed());

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
