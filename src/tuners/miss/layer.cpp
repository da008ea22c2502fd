// MiSS (Python PEFT's tuners/miss): the input is cut into r-wide shards that are summed and multiplied by
// one shared block, y = W x + (sum_shards x_s) B. "mini" repeats a narrower block along the outputs; "bat"
// instead updates every (r x r) tile of W as T B + B.

#include <cmath>

#include <ATen/ops/dropout.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linalg_inv.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/pad.h>
#include <ATen/ops/sum.h>

#include <peft/error.h>
#include <peft/tuners/miss/config.h>

#include "core/tensor_slots.h"
#include "tuners/common/layer_checks.h"
#include "tuners/common/pending_adapter.h"
#include "tuners/miss/layer.h"

namespace peft::detail::miss {
namespace {

enum class Mode { Balance, Bat, Mini };

struct Record : AdapterRecord {
  using AdapterRecord::AdapterRecord;
  Mode mode = Mode::Balance;
  int64_t mini_r = 1;
  double dropout = 0;
};

class MissLayer final : public DictAdapterLayer {
 public:
  MissLayer(const LayerRequest& request, const Method& method)
      : DictAdapterLayer(request, method, {{"miss_block"}}) {}

 protected:
  at::Tensor forward_active(torch::nn::Module& base, const at::Tensor& x, const ActiveAdapters& active,
                            BaseForward base_forward) override {
    const c10::ScalarType previous = x.scalar_type();
    // Python picks the forward from the layer's first adapter; here each adapter keeps its own variant.
    at::Tensor weight = base_layer().weight().detach();
    bool any_bat = false;
    for (const auto& record : active) {
      if (static_cast<const Record&>(*record).mode != Mode::Bat) continue;
      weight = weight + bat_delta(static_cast<const Record&>(*record), weight, false);
      any_bat = true;
    }
    at::Tensor result;
    if (any_bat) {
      at::Tensor bias = base_layer().bias();
      if (bias.defined()) bias = bias.to(weight.scalar_type());
      result = at::linear(x.to(weight.scalar_type()), weight, bias);
    } else {
      result = base_forward(x);
    }
    at::Tensor input = x;
    for (const auto& r : active) {
      const auto& record = static_cast<const Record&>(*r);
      if (record.mode == Mode::Bat) continue;
      const at::Tensor block = shared_block(record);
      const int64_t width = block.size(0);
      if (input.size(-1) % width != 0) input = at::pad(input, {0, width - input.size(-1) % width});
      at::Tensor shards = input.to(block.scalar_type());
      if (record.dropout > 0) shards = at::dropout(shards, record.dropout, base.is_training());
      std::vector<int64_t> shape(shards.sizes().begin(), shards.sizes().end() - 1);
      shape.push_back(shards.size(-1) / width);
      shape.push_back(width);
      result = result + at::matmul(at::sum(shards.reshape(shape), {-2}), block);
    }
    return result.to(previous);
  }

  std::pair<at::Tensor, at::Tensor> merge_step(const at::Tensor& weight, const at::Tensor& bias,
                                               const AdapterRecord& r) const override {
    const auto& record = static_cast<const Record&>(r);
    if (record.mode == Mode::Bat) return {(weight + bat_delta(record, weight, false)).to(weight.scalar_type()), bias};
    return {add_to_shards(record, weight, 1).to(weight.scalar_type()), bias};
  }

  std::pair<at::Tensor, at::Tensor> unmerge_step(const at::Tensor& weight, const at::Tensor& bias,
                                                 const AdapterRecord& r) const override {
    const auto& record = static_cast<const Record&>(r);
    if (record.mode == Mode::Bat) return {bat_delta(record, weight, true).to(weight.scalar_type()), bias};
    return {add_to_shards(record, weight, -1).to(weight.scalar_type()), bias};
  }

 private:
  /// The (r, out_features) block; "mini" repeats its (r, mini_r) block along the outputs.
  at::Tensor shared_block(const Record& record) const {
    const at::Tensor& block = param(0, record.name);
    if (record.mode == Mode::Mini) return block.repeat({1, base_layer().out_features / record.mini_r});
    return block;
  }

  /// "bat": every (r x r) tile T of W becomes T B + B (reverse: the W that gives this one).
  at::Tensor bat_delta(const Record& record, const at::Tensor& weight, bool reverse) const {
    at::Tensor block = param(0, record.name);
    const bool upcast = block.is_cpu() && (block.scalar_type() == at::kHalf || block.scalar_type() == at::kBFloat16);
    if (upcast) block = block.to(at::kFloat);
    const at::Tensor w = weight.to(block.scalar_type());
    const int64_t r = block.size(-1);
    const at::Tensor tiles = w.reshape({w.size(0) / r, r, w.size(1) / r, r}).permute({2, 0, 1, 3});
    at::Tensor result;
    if (reverse) {
      const at::Tensor inverse = at::linalg_inv(at::eye(r, block.options().dtype(at::kFloat)) + block.to(at::kFloat));
      result = at::matmul(tiles - block, inverse.to(block.scalar_type()));
    } else {
      result = at::matmul(tiles, block) + block;
    }
    return result.permute({1, 2, 0, 3}).reshape(w.sizes());
  }

  /// W with the shared block added to (sign=1) or removed from (sign=-1) every r-wide shard of its columns.
  at::Tensor add_to_shards(const Record& record, const at::Tensor& weight, int sign) const {
    at::Tensor block = shared_block(record);
    if (block.is_cpu() && (block.scalar_type() == at::kHalf || block.scalar_type() == at::kBFloat16)) {
      block = block.to(at::kFloat);
    }
    at::Tensor w = weight.to(block.scalar_type()).clone();
    const int64_t r = block.size(0), in = w.size(1);
    const int64_t aligned = in / r * r;
    if (aligned > 0) {
      at::Tensor head = w.narrow(1, 0, aligned);
      const at::Tensor shards = head.reshape({-1, aligned / r, r}).permute({1, 2, 0});
      head.copy_((shards + sign * block).permute({2, 0, 1}).reshape(head.sizes()));
    }
    if (aligned < in) {
      at::Tensor tail = w.narrow(1, aligned, in - aligned);
      tail.add_(block.t().narrow(1, 0, in - aligned), sign);
    }
    return w;
  }
};

class MissBuilder final : public BuilderOf<const MissConfig> {
 public:
  using BuilderOf::BuilderOf;

  std::unique_ptr<PendingChange> prepare(const LayerRequest& request) override {
    const BaseLayer& base = request.base;
    const int64_t r = config_.r(), in = base.in_features, out = base.out_features;
    auto record = std::make_shared<Record>(request.adapter_name);
    record->mini_r = config_.mini_r();
    record->dropout = config_.miss_dropout();
    const InitWeights& init = config_.init_weights();
    std::vector<int64_t> shape{r, out};
    if (init.method() == "bat") {
      if (in % r != 0 || out % r != 0) {
        throw ConfigError("The weight matrix must be fully divisible into [r, r] blocks (layer '" + request.module_name +
                          "': " + std::to_string(out) + "x" + std::to_string(in) + ", r=" + std::to_string(r) + ").");
      }
      record->mode = Mode::Bat;
      shape = {out / r, r, r};
    } else if (init.method() == "mini") {
      if (out % record->mini_r != 0) {
        throw ConfigError("mini_r is divided along the out_features dimension: out_features (" + std::to_string(out) +
                          ") of layer '" + request.module_name + "' must be divisible by mini_r (" +
                          std::to_string(record->mini_r) + ").");
      }
      record->mode = Mode::Mini;
      shape = {r, record->mini_r};
    }
    const at::TensorOptions options = adapter_options(base, request.low_cpu_mem_usage);
    at::Tensor block = at::empty(shape, options);
    if (materialised(options)) {
      at::NoGradGuard no_grad;
      // Every variant starts at zero (a no-op) except init_weights=false, which is random.
      if (init.is_bool() && !init.enabled()) {
        kaiming_default(block);
      } else {
        block.zero_();
      }
    }
    return prepare_dict_adapter<MissLayer>(request, method_, {record, {{0, block}}, {}});
  }

};

}  // namespace

std::unique_ptr<AdapterBuilder> make_builder(const Method& method, const MissConfig& config) {
  return std::make_unique<MissBuilder>(method, config);
}
}  // namespace peft::detail::miss
