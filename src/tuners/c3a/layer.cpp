// C3A (Python PEFT's tuners/c3a): the update is block-circulant; each (out/b x in/b) grid of length-b kernels
// acts on the input as circular convolutions, computed with the FFT, and the result is divided by
// in_features.

#include <cmath>

#include <ATen/ops/einsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/fft_fft.h>
#include <ATen/ops/fft_ifft.h>
#include <ATen/ops/real.h>
#include <torch/nn/init.h>

#include <peft/error.h>
#include <peft/tuners/c3a/config.h>

#include "core/matching.h"
#include "tuners/c3a/layer.h"
#include "tuners/common/pending_adapter.h"

namespace peft::detail::c3a {
namespace {

/// x (..., n*b) with kernels w (m, n, b): y_mb = sum_n circular convolution of x_nb with w_mnb.
at::Tensor block_circular_convolution(const at::Tensor& x, const at::Tensor& w) {
  const int64_t n = w.size(1), b = w.size(2);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(n);
  shape.push_back(b);
  const at::Tensor spectrum = at::einsum("...nb,mnb->...mb", {at::fft_ifft(x.reshape(shape)), at::fft_fft(w)});
  const at::Tensor y = at::real(at::fft_fft(spectrum));
  return y.flatten(-2);
}

/// The dense (out, in) matrix of the block-circulant operator.
at::Tensor circulant(const at::Tensor& w) {
  const int64_t n = w.size(1), b = w.size(2);
  const at::Tensor eye = at::eye(n * b, w.options());
  return block_circular_convolution(eye, w).t();
}

class C3ALayer final : public DictAdapterLayer {
 public:
  C3ALayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, {{"c3a_kernel"}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const c10::ScalarType previous = x.scalar_type();
    at::Tensor result = base_forward(x);
    const at::Tensor input = x.to(at::kFloat);
    // Each adapter convolves the layer input. (Python PEFT feeds the second active adapter the first one's
    // output instead, which only works when in == out features; with one active adapter both agree, and
    // this form is the one merging reproduces.)
    for (const auto& record : active) {
      const at::Tensor kernel = param(0, record->name).to(at::kFloat);
      const at::Tensor delta = block_circular_convolution(input, kernel) / input.size(-1);
      result = result + delta.to(result.scalar_type());
    }
    return result.to(previous);
  }

  at::Tensor delta_weight(const AdapterRecord& record) const override {
    const at::Tensor weight = base_layer().weight();
    return circulant(param(0, record.name).to(at::kFloat)).to(weight.scalar_type()) / weight.size(-1);
  }
};

class C3ABuilder final : public BuilderOf<const C3AConfig> {
 public:
  C3ABuilder(const Method& method, const C3AConfig& config)
      : BuilderOf(method, config), block_sizes_(config.block_size_pattern(), "block_size_pattern") {}

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    const int64_t b = block_sizes_.lookup(request.module_name, config_.block_size());
    const int64_t in = base.in_features, out = base.out_features;
    if (in % b != 0) {
      throw ConfigError("The block size should be a factor of the input size. However, the input size is " +
                        std::to_string(in) + " and the block size is " + std::to_string(b) + " (layer '" +
                        request.module_name + "')");
    }
    if (out % b != 0) {
      throw ConfigError("The block size should be a factor of the output size. However, the output size is " +
                        std::to_string(out) + " and the block size is " + std::to_string(b) + " (layer '" +
                        request.module_name + "')");
    }
    // The kernel is float32 whatever the layer's dtype (Python PEFT's choice: the FFT needs the precision).
    at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage).dtype(at::kFloat);
    at::Tensor kernel = at::empty({out / b, in / b, b}, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      const InitWeights& init = config_.init_weights();
      if (init.is_bool() && init.enabled()) {
        kernel.zero_();
      } else if (init.method() == "gaussian") {
        kernel.normal_();
      } else if (init.method() == "kaiming_uniform") {
        const double a = std::sqrt(1.0 / static_cast<double>(in));
        kernel.uniform_(-a, a);
      } else {  // "xavier_uniform" or false
        const double a = std::sqrt(3.0) * std::sqrt(2.0 / static_cast<double>(in + out));
        kernel.uniform_(-a, a);
      }
    }
    auto record = std::make_shared<AdapterRecord>(request.adapter_name);
    return prepare_dict_adapter<C3ALayer>(request, method_, {record, {{0, kernel}}, {}});
  }

 private:
  PatternLookup<int64_t> block_sizes_;
};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const C3AConfig& config) {
  return std::make_unique<C3ABuilder>(method, config);
}

}  // namespace peft::detail::c3a
