// BOFT (Python PEFT's tuners/boft): the input is rotated by a butterfly product of block-diagonal
// orthogonal matrices, B = P_{N-1} D_{N-1} P_{N-1}^T ... P_0 D_0 P_0^T (each D_i the Cayley transforms of
// boft_R[i]), and the output is scaled per feature by boft_s: y = s * (W (x B)) (bias untouched).

#include <cmath>

#include <ATen/ops/arange.h>
#include <ATen/ops/block_diag.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linalg_solve.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/zeros.h>
#include <torch/nn/modules/conv.h>

#include <peft/error.h>
#include <peft/tuners/boft/config.h>

#include "tuners/common/conv_functional.h"
#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/boft/layer.h"

namespace peft::detail::boft {
namespace {

enum Slot : size_t { R, S };

/// Python's block_butterfly_perm: inside every block of n/b features the r-wide runs at even positions move
/// before those at odd positions, so the next factor's blocks mix features the previous factor kept apart.
std::vector<int64_t> butterfly_permutation(int64_t n, int64_t b, int64_t r, int64_t extra_factors) {
  std::vector<int64_t> indices(n);
  for (int64_t i = 0; i < n; ++i) indices[i] = i;
  if (extra_factors == 0) return indices;
  if (b * r * 2 > n) throw ConfigError("Invalid number of blocks!");
  const int64_t block = n / b;
  // Python's sort_block(block, r): the r-sized runs at even positions first, then the odd ones.
  const int64_t runs = block / r;
  std::vector<int64_t> order;
  for (int64_t parity : {0, 1}) {
    for (int64_t pos = parity; pos < runs; pos += 2) {
      for (int64_t k = 0; k < r; ++k) order.push_back(pos * r + k);
    }
  }
  std::vector<int64_t> out(indices);
  for (int64_t start = 0; start < n; start += block) {
    for (int64_t k = 0; k < block; ++k) out[start + k] = indices[start + order[k]];
  }
  return out;
}

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  at::Tensor permutations;  // (factors, n, n) float32 permutation matrices, P[i][row, perm[row]] = 1
  double dropout = 0;
};

class BOFTLayer final : public DictAdapterLayer {
 public:
  BOFTLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, {{"boft_R"}, {"boft_s"}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const c10::ScalarType previous = x.scalar_type();
    const bool training = base.is_training();
    at::Tensor rotation, scale;
    for (const auto& r : active) {
      const auto& record = static_cast<const Record&>(*r);
      const at::Tensor b = butterfly(record, training).to(x.scalar_type());
      const at::Tensor s = out_scale(record).to(x.scalar_type());
      rotation = rotation.defined() ? at::mm(b, rotation) : b;
      scale = scale.defined() ? s * scale : s;
    }
    at::Tensor result;
    if (base_layer().is_conv()) {
      const at::Tensor weight = base_layer().weight();
      const at::Tensor flat = weight.reshape({weight.size(0), -1});
      const at::Tensor rotated = (at::mm(rotation.to(weight.scalar_type()), flat.t()).t() * scale.to(weight.scalar_type()))
                                     .reshape(weight.sizes());
      result = conv_like(base, kind(), x.to(weight.scalar_type()), rotated);
      const at::Tensor bias = base_layer().bias();
      if (bias.defined()) result = result + bias.to(result.scalar_type()).view({1, -1, 1, 1});
    } else {
      result = base_forward(at::matmul(x, rotation));
      const at::Tensor bias = base_layer().bias();
      if (bias.defined()) result = result - bias;
      result = result * scale.squeeze(-1);
      if (bias.defined()) result = result + bias;
    }
    return result.to(previous);
  }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& r) const override {
    const auto& record = static_cast<const Record&>(r);
    const at::Tensor b = butterfly(record, false);
    const at::Tensor flat = weight.reshape({weight.size(0), -1}).to(b.scalar_type());
    const at::Tensor merged = at::mm(b, flat.t()).t() * out_scale(record);
    return {merged.reshape(weight.sizes()).to(weight.scalar_type()), bias};
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& r) const override {
    // B is orthogonal: its transpose undoes it.
    const auto& record = static_cast<const Record&>(r);
    const at::Tensor b = butterfly(record, false);
    const at::Tensor flat = weight.reshape({weight.size(0), -1}).to(b.scalar_type());
    const at::Tensor restored = at::mm(b.t(), flat.t()).t() * (1 / out_scale(record));
    return {restored.reshape(weight.sizes()).to(weight.scalar_type()), bias};
  }

 private:
  /// boft_s as an (out, 1) column (Conv2d layers store it as a row).
  at::Tensor out_scale(const Record& record) const {
    const at::Tensor& s = param(S, record.name);
    return base_layer().is_conv() ? s.t() : s;
  }

  at::Tensor butterfly(const Record& record, bool training) const {
    const at::Tensor& params = param(R, record.name);
    const int64_t factors = params.size(0), blocks = params.size(1), h = params.size(2);
    const at::Tensor flat = params.reshape({factors * blocks, h, h});
    // Cayley: (I - S)(I + S)^-1 with S the skew-symmetric part; solved as the transposed system.
    const at::Tensor skew = 0.5 * (flat - flat.transpose(1, 2));
    const at::Tensor eye = at::eye(h, flat.options()).expand({factors * blocks, h, h});
    at::Tensor rotations = at::linalg_solve((eye + skew).transpose(1, 2), (eye - skew).transpose(1, 2)).transpose(1, 2);
    rotations = rotations.reshape({factors, blocks, h, h});
    if (training && record.dropout > 0) rotations = multiplicative_dropout(rotations, record.dropout);
    const at::Tensor perms = record.permutations.to(rotations.device(), rotations.scalar_type());
    at::Tensor result;
    for (int64_t i = 0; i < factors; ++i) {
      std::vector<at::Tensor> list;
      for (int64_t j = 0; j < blocks; ++j) list.push_back(rotations[i][j]);
      const at::Tensor factor = at::mm(perms[i], at::mm(at::block_diag(list), perms[i].t()));
      result = result.defined() ? at::mm(factor, result) : factor;
    }
    return result;
  }

  // Python's MultiplicativeDropoutLayer: in one random factor, int(p * blocks) random blocks become identity.
  static at::Tensor multiplicative_dropout(const at::Tensor& rotations, double p) {
    const int64_t n = rotations.size(0), d = rotations.size(1), h = rotations.size(2);
    const int64_t chosen = at::randint(0, n, {1}).item<int64_t>();
    const int64_t replace = static_cast<int64_t>(p * static_cast<double>(d));
    const at::TensorOptions options = rotations.options();
    at::Tensor mask = at::cat({at::ones({replace}, options), at::zeros({d - replace}, options)});
    mask = mask.index({at::randperm(d, at::TensorOptions().dtype(at::kLong).device(rotations.device()))}).view({1, d, 1, 1});
    at::Tensor full = at::zeros({n, d, 1, 1}, options);
    full[chosen] = mask[0];
    const at::Tensor eye = at::eye(h, options).repeat({n, d, 1, 1});
    return (1 - full) * rotations + full * eye;
  }
};

class BOFTBuilder final : public BuilderOf<BOFTConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    int64_t features = base.in_features;
    std::string what = "in_features";
    if (base.kind == LayerKind::Conv2d) {
      features = ungrouped_conv_fan_in(request, method_);
      what = "Convolutional kernel dimension";
    } else {
      align_fan_in_fan_out(base, config_.fan_in_fan_out());
    }
    const int64_t extra = config_.boft_n_butterfly_factor() - 1;
    int64_t block_size = config_.boft_block_size(), block_num = config_.boft_block_num();
    const std::string layer = " (layer '" + request.module_name + "')";
    auto fail = [&](const std::string& message) -> void { throw ConfigError(message + layer); };
    const std::string factor = std::to_string(extra + 1);
    if (block_size == 0) {
      if (features % block_num != 0) fail(what + " (" + std::to_string(features) + ") must be divisible by boft_block_num (" + std::to_string(block_num) + ")!");
      if (extra != 0) {
        if (extra > static_cast<int64_t>(std::log2(static_cast<double>(block_num)))) {
          fail("Invalid combination of boft_n_butterfly_factor (" + factor + ") and boft_block_num (" + std::to_string(block_num) + ")!");
        }
        if (block_num % (int64_t{1} << extra) != 0) {
          fail("boft_block_num (" + std::to_string(block_num) + ") must be a multiple of 2 raised to the power of boft_n_butterfly_factor (" + factor + ")!");
        }
      }
      block_size = features / block_num;
    } else {
      if (features % block_size != 0) fail(what + " (" + std::to_string(features) + ") must be divisible by boft_block_size (" + std::to_string(block_size) + ")!");
      if (extra != 0 && (features < (block_size << extra) || features % (block_size << extra) != 0)) {
        fail("Invalid combination of " + what + " (" + std::to_string(features) + "), boft_n_butterfly_factor (" + factor +
             ") and boft_block_size (" + std::to_string(block_size) + ")!");
      }
      block_num = features / block_size;
    }
    if (extra != 0) {
      if (block_num % 2 != 0) fail("boft_block_num (" + std::to_string(block_num) + ") must be an even number!");
      if (block_size % 2 != 0) fail("boft_block_size (" + std::to_string(block_size) + ") must be an even number!");
    }
    auto record = std::make_shared<Record>(request.adapter_name);
    record->dropout = config_.boft_dropout();
    record->permutations = at::zeros({extra + 1, features, features});
    for (int64_t i = 0; i <= extra; ++i) {
      const std::vector<int64_t> perm = butterfly_permutation(features, block_num >> i, block_size / 2, extra);
      for (int64_t row = 0; row < features; ++row) record->permutations[i][row][perm[row]] = 1.0;
    }

    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor rotations = at::empty({extra + 1, block_num, block_size, block_size}, options);
    at::Tensor scale = at::empty(base.kind == LayerKind::Conv2d ? std::vector<int64_t>{1, base.out_features}
                                                                 : std::vector<int64_t>{base.out_features, 1},
                                 options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      if (config_.init_weights()) {
        rotations.zero_();
        scale.fill_(1.0);
      } else {
        rotations.normal_(0.0, 0.1);
        scale.normal_(1.0, 0.1);
      }
    }
    DictAdapterLayer::NewAdapter adapter;
    adapter.record = record;
    adapter.tensors.emplace_back(R, rotations);
    adapter.tensors.emplace_back(S, scale);
    return prepare_dict_adapter<BOFTLayer>(request, method_, std::move(adapter));
  }

};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, BOFTConfig& config) {
  return std::make_unique<BOFTBuilder>(method, config);
}
}  // namespace peft::detail::boft
