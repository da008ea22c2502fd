// WaveFT (Python PEFT's tuners/waveft): n_frequency learned coefficients at positions drawn by
// torch.randperm from random_loc_seed. With use_idwt they are wavelet coefficients: placed, centred, in a
// matrix padded by what the transform loses, split into the four sub-bands, reconstructed with the inverse
// 2-D wavelet transform and cropped back to (out, in). Without it they are the update's entries. Either way
// the update is scaled by `scaling`.

#include <algorithm>
#include <cmath>
#include <map>
#include <tuple>

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>

#include <peft/error.h>
#include <peft/tuners/waveft/config.h>

#include "core/matching.h"
#include "tuners/common/dense_update_layer.h"
#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/waveft/layer.h"
#include "tuners/waveft/wavelets.h"

namespace peft::detail::waveft {
namespace {

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  double scaling = 0;
  at::Tensor rows, cols;                         // positions of the coefficients in (out, in) (int64, CPU)
  std::optional<ReconstructionFilters> filters;  // set with use_idwt
  int64_t reduction = 0;                         // rows and columns the transform loses
};

class WaveFTLayer final : public DenseUpdateLayer {
 public:
  WaveFTLayer(const LayerRequest& request, const Method& method)
      : DenseUpdateLayer(request, method, {{"waveft_spectrum"}}) {}

 protected:
  /// In the coefficients' dtype, as Python computes it.
  at::Tensor dense_update(const AdapterRecord& record) const override {
    const auto& wave = static_cast<const Record&>(record);
    if (!wave.filters) {
      return scatter(param(0, wave.name), wave, base_layer().out_features, base_layer().in_features, 0, 0) * wave.scaling;
    }
    return reconstructed(wave);
  }

 private:
  /// The inverse wavelet transform of the coefficients.
  at::Tensor reconstructed(const Record& record) const {
    const at::Tensor& spectrum = param(0, record.name);
    const int64_t out = base_layer().out_features, in = base_layer().in_features;
    // Pad by what the transform loses, to even sizes, and centre the coefficients' (out, in) frame.
    const int64_t height = round_up_to_even(out + record.reduction), width = round_up_to_even(in + record.reduction);
    const at::Tensor coefficients = scatter(spectrum, record, height, width, (height - out) / 2, (width - in) / 2);
    const int64_t h = height / 2, w = width / 2;
    const at::Tensor image =
        inverse_dwt2d(coefficients.narrow(0, 0, h).narrow(1, 0, w), coefficients.narrow(0, 0, h).narrow(1, w, w),
                      coefficients.narrow(0, h, h).narrow(1, 0, w), coefficients.narrow(0, h, h).narrow(1, w, w),
                      *record.filters) *
        record.scaling;
    // A centred crop where the reconstruction came out larger (odd sizes).
    return image.narrow(0, (image.size(0) - out) / 2, out).narrow(1, (image.size(1) - in) / 2, in);
  }

  static int64_t round_up_to_even(int64_t n) { return n % 2 == 0 ? n : n + 1; }

  /// A zero (height, width) matrix with the coefficients at their positions shifted by the offsets.
  static at::Tensor scatter(const at::Tensor& spectrum, const Record& record, int64_t height, int64_t width,
                            int64_t row_offset, int64_t col_offset) {
    const at::Device device = spectrum.device();
    at::Tensor dense = at::zeros({height, width}, spectrum.options());
    dense.index_put_({(record.rows + row_offset).to(device), (record.cols + col_offset).to(device)}, spectrum);
    return dense;
  }
};

class WaveFTBuilder final : public BuilderOf<WaveFTConfig> {
 public:
  WaveFTBuilder(const Method& method, WaveFTConfig& config)
      : BuilderOf(method, config), n_frequencies_(config.n_frequency_pattern(), "n_frequency_pattern") {
    if (config.use_idwt()) {
      filters_ = reconstruction_filters(config.wavelet_family());
      if (!filters_) {
        // Python accepts the family in its config but fails in the forward; refused before anything changes.
        std::vector<std::string> known;
        for (const WaveletCoefficients& wavelet : wavelet_coefficients()) known.push_back(wavelet.name);
        throw ConfigError("Unknown wavelet name '" + config.wavelet_family() + "'. Available wavelets: " +
                          python_list(known) + " (Python PEFT's WaveFT has no filter coefficients for '" +
                          config.wavelet_family() + "'; it can only be used with use_idwt=false)");
      }
      for (const auto& [family, reduction] : wavelet_reductions()) {
        if (family == config.wavelet_family()) reduction_ = reduction;
      }
      // The padding only makes up for a filter of reduction + 2 taps. Python's coif5 has 48 where its reduction
      // assumes 30: its reconstruction comes out smaller than the layer and its forward fails.
      const int64_t taps = static_cast<int64_t>(filters_->lo.size());
      if (taps != reduction_ + 2) {
        throw ConfigError("wavelet_family '" + config.wavelet_family() + "' cannot be used with use_idwt: Python PEFT's "
                          "filter for it has " + std::to_string(taps) + " coefficients where its reduction (" +
                          std::to_string(reduction_) + ") assumes " + std::to_string(reduction_ + 2) +
                          ", so the reconstructed update would be smaller than the layer (use_idwt=false works)");
      }
    }
  }

  /// Python's proportional_parameters: n_frequency * (number of layers), shared by in * out.
  void plan(const std::vector<LayerRequest>& requests) override {
    if (!config_.proportional_parameters()) return;
    int64_t total = 0;
    for (const LayerRequest& request : requests) total += request.base.in_features * request.base.out_features;
    if (requests.empty() || total == 0) throw ConfigError("No target modules found for proportional parameter allocation.");
    const int64_t budget = config_.n_frequency() * static_cast<int64_t>(requests.size());
    for (const LayerRequest& request : requests) {
      const double ratio = static_cast<double>(request.base.in_features * request.base.out_features) / static_cast<double>(total);
      // Python's round() rounds halves to even, as nearbyint does in the default rounding mode.
      proportional_[request.module_name] = std::max<int64_t>(1, static_cast<int64_t>(std::nearbyint(ratio * budget)));
    }
  }

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    align_fan_in_fan_out(request.base, config_.fan_in_fan_out());
    const std::shared_ptr<Record> record = record_for(request);
    const int64_t n = record->rows.numel();
    const at::TensorOptions options = adapter_options(request.base, request.low_cpu_mem_usage);
    at::Tensor spectrum = at::empty({n}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      // Zeros, or Python's randn(n) * 0.01 (drawn in float32, then cast to the layer's dtype).
      spectrum.copy_(config_.init_weights() ? at::zeros({n}) : at::randn({n}) * 0.01);
    }
    return prepare_dict_adapter<WaveFTLayer>(request, method_, {record, {{0, spectrum}}, {}});
  }

 private:
  /// The layer's settings: its n_frequency, the coefficients' positions, the wavelet.
  std::shared_ptr<Record> record_for(const LayerRequest& request) const {
    const int64_t n = n_frequency(request.module_name);
    if (n <= 0) {
      throw ConfigError("`n_frequency` should be a positive integer value but the value passed is " + std::to_string(n) +
                        " (layer '" + request.module_name + "')");
    }
    const int64_t out = request.base.out_features, in = request.base.in_features;
    check_n_frequency_fits(n, in, out, request.module_name);
    auto record = std::make_shared<Record>(request.adapter_name);
    std::tie(record->rows, record->cols) = seeded_positions(out, in, n, config_.random_loc_seed());
    record->scaling = config_.scaling();
    record->filters = filters_;
    record->reduction = reduction_;
    return record;
  }

  int64_t n_frequency(const std::string& module_name) const {
    if (config_.proportional_parameters()) {
      auto it = proportional_.find(module_name);
      if (it != proportional_.end()) return it->second;
    }
    return n_frequencies_.lookup(module_name, config_.n_frequency());
  }

  PatternLookup<int64_t> n_frequencies_;
  std::optional<ReconstructionFilters> filters_;
  int64_t reduction_ = 0;
  std::map<std::string, int64_t> proportional_;
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, WaveFTConfig& config) {
  return std::make_unique<WaveFTBuilder>(method, config);
}

}  // namespace peft::detail::waveft
