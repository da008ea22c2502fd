#include "tuners/vblora/topk_checkpoint.h"

#include <limits>
#include <sstream>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/topk.h>

#include <peft/error.h>

namespace peft::detail::vblora {
namespace {

const std::string kIndices = "_topk_indices";
const std::string kWeights = "_topk_weights";

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// Python's choice: the smallest integer type that holds every index.
c10::ScalarType index_type(int64_t num_vectors) {
  if (num_vectors < (int64_t{1} << 8)) return at::kByte;
  if (num_vectors < (int64_t{1} << 15)) return at::kShort;
  if (num_vectors < (int64_t{1} << 31)) return at::kInt;
  return at::kLong;
}

/// Why `indices` / `weights` (the pair stored for `key`) cannot be logits of `num_vectors` entries, or "".
std::string pair_problem(const at::Tensor& indices, const at::Tensor& weights, int64_t num_vectors) {
  std::ostringstream problem;
  if (!indices.defined() || !weights.defined()) return "a tensor is undefined";
  if (indices.is_floating_point() || indices.is_complex() || indices.scalar_type() == at::kBool) {
    problem << "the indices hold " << indices.scalar_type() << " values, not integers";
  } else if (!weights.is_floating_point()) {
    problem << "the weights hold " << weights.scalar_type() << " values, not floating point";
  } else if (indices.dim() == 0 || indices.dim() != weights.dim() ||
             indices.sizes().slice(0, indices.dim() - 1) != weights.sizes().slice(0, weights.dim() - 1) ||
             weights.size(-1) != indices.size(-1) - 1) {
    problem << "indices of shape " << indices.sizes() << " and weights of shape " << weights.sizes()
            << " do not fit (the weights hold the first k-1 of the k indices' weights)";
  } else if (indices.numel() > 0) {
    const int64_t low = indices.min().item<int64_t>(), high = indices.max().item<int64_t>();
    if (low < 0 || high >= num_vectors) {
      problem << "the indices range over [" << low << ", " << high << "], the bank has " << num_vectors << " vectors";
    }
  }
  return problem.str();
}

}  // namespace

StateDict to_topk_checkpoint(const StateDict& state_dict, int64_t topk, int64_t num_vectors) {
  at::NoGradGuard no_grad;
  StateDict out;
  for (const auto& item : state_dict) {
    if (item.key().find("vblora_logits") == std::string::npos) {
      out.insert(item.key(), item.value());
      continue;
    }
    const auto [logits, indices] = at::topk(item.value(), topk);
    out.insert(item.key() + kIndices, indices.to(index_type(num_vectors)));
    out.insert(item.key() + kWeights, at::softmax(logits, -1).narrow(-1, 0, topk - 1).contiguous());
  }
  return out;
}

StateDict from_topk_checkpoint(const StateDict& state_dict, int64_t num_vectors) {
  at::NoGradGuard no_grad;
  StateDict out;
  for (const auto& item : state_dict) {
    const std::string& key = item.key();
    if (ends_with(key, kWeights) && state_dict.contains(key.substr(0, key.size() - kWeights.size()) + kIndices)) {
      continue;  // read with its indices
    }
    if (!ends_with(key, kIndices)) {
      out.insert(key, item.value());
      continue;
    }
    const std::string logits_key = key.substr(0, key.size() - kIndices.size());
    const at::Tensor* weights = state_dict.find(logits_key + kWeights);
    if (!weights) {
      throw StateDictError("The save_only_topk_weights checkpoint has " + key + " but no " + logits_key + kWeights + ".");
    }
    const std::string problem = pair_problem(item.value(), *weights, num_vectors);
    if (!problem.empty()) throw StateDictError("Cannot read " + key + " / " + logits_key + kWeights + ": " + problem + ".");
    // The last weight is 1 minus the others; log(weight) at the indices, -inf elsewhere, gives the same softmax.
    const at::Tensor first = weights->to(at::kFloat);
    const at::Tensor all = at::cat({first, 1 - first.sum(-1, /*keepdim=*/true)}, -1);
    std::vector<int64_t> shape = all.sizes().vec();
    shape.back() = num_vectors;
    const at::Tensor logits = at::full(shape, -std::numeric_limits<double>::infinity(), first.options())
                                  .scatter(-1, item.value().to(at::kLong).to(first.device()), all.log());
    out.insert(logits_key, logits);
  }
  return out;
}

}  // namespace peft::detail::vblora
