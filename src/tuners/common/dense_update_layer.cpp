#include "tuners/common/dense_update_layer.h"

#include <string>

#include <ATen/TensorOperators.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/randperm.h>

#include <peft/error.h>

namespace peft::detail {

at::Tensor DenseUpdateLayer::forward_active(torch::nn::Module&, const at::Tensor& x, const ActiveAdapters& active,
                                            BaseForward base_forward) {
  const c10::ScalarType previous = x.scalar_type();
  at::Tensor result = base_forward(x);
  for (const auto& record : active) {
    const at::Tensor update = dense_update(*record);
    result = result + at::linear(x.to(update.scalar_type()), update);
  }
  return result.to(previous);
}

at::Tensor DenseUpdateLayer::delta_weight(const AdapterRecord& record) const {
  const at::Tensor update = dense_update(record);
  return base_layer().fan_in_fan_out ? update.t() : update;
}

std::pair<at::Tensor, at::Tensor> seeded_positions(int64_t out, int64_t in, int64_t n, int64_t seed) {
  at::Generator generator = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
  const at::Tensor flat = at::randperm(out * in, generator, at::TensorOptions().dtype(at::kLong)).narrow(0, 0, n);
  return {flat.div(in, "floor"), flat.remainder(in)};
}

void check_n_frequency_fits(int64_t n, int64_t in, int64_t out, const std::string& module_name) {
  if (n > in * out) {
    throw ConfigError("`n_frequency` should be less than or equal to the product of the input and output dimensions "
                      "but the value passed is " + std::to_string(n) + " and the product is " +
                      std::to_string(in * out) + " (layer '" + module_name + "')");
  }
}

}  // namespace peft::detail
