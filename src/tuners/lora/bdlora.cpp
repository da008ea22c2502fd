// BD-LoRA: its config in adapter_config.json, its checks, and the block-diagonal factor's math (Python PEFT's
// BdLoraConfig, BdLoraLinearVariant, BlockDiagonalLinear in tuners/lora/variants.py).

#include "tuners/lora/bdlora.h"

#include <algorithm>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/block_diag.h>
#include <ATen/ops/einsum.h>
#include <ATen/ops/linear.h>
#include <torch/nn/init.h>

#include <peft/error.h>

#include "core/tensor_slots.h"
#include "tuners/lora/init.h"
#include "tuners/lora/layer.h"

namespace peft::detail::lora {
namespace {

// Python's repr of an optional list of strings, as its messages print it.
std::string python_repr(const std::optional<std::vector<std::string>>& list) {
  if (!list) return "None";
  std::string out = "[";
  for (size_t i = 0; i < list->size(); ++i) out += (i ? ", '" : "'") + (*list)[i] + "'";
  return out + "]";
}

bool matches_any(const std::optional<std::vector<std::string>>& patterns, const std::string& name) {
  if (!patterns) return false;
  return std::any_of(patterns->begin(), patterns->end(),
                     [&](const std::string& p) { return name.find(p) != std::string::npos; });
}

void check_divisible(int64_t in, int64_t out, int64_t nblocks, const std::string& name, const char* factor) {
  if (in % nblocks == 0 && out % nblocks == 0) return;
  throw ConfigError("self.in_features=" + std::to_string(in) + " or self.out_features=" + std::to_string(out) +
                    " not divisible by " + std::to_string(nblocks) + " (block-diagonal " + factor + " of '" + name +
                    "')");
}

}  // namespace

std::optional<BdLoraConfig> read_bdlora(JsonConfigReader& in) {
  const nlohmann::json* value = in.raw("use_bdlora");
  if (!value || value->is_null()) return std::nullopt;
  if (!value->is_object()) in.fail("use_bdlora", "must be null or an object (Python's BdLoraConfig), got " + value->dump());
  // Python builds BdLoraConfig(**value): absent keys take their defaults, unknown ones are an error.
  JsonConfigReader fields(*value, in.source() + ", use_bdlora");
  BdLoraConfig config;
  config.target_modules_bd_a(fields.get_string_list("target_modules_bd_a"));
  config.target_modules_bd_b(fields.get_string_list("target_modules_bd_b"));
  config.nblocks(fields.get_int("nblocks", config.nblocks()));
  config.match_strict(fields.get_bool("match_strict", config.match_strict()));
  const std::vector<std::string> unknown = fields.unread_keys();
  if (!unknown.empty()) {
    in.fail("use_bdlora", "has a field BdLoraConfig does not have: '" + unknown.front() + "'");
  }
  return config;
}

nlohmann::json write_bdlora(const std::optional<BdLoraConfig>& config) {
  if (!config) return nullptr;
  auto list = [](const std::optional<std::vector<std::string>>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); };
  return {{"target_modules_bd_a", list(config->target_modules_bd_a())},
          {"target_modules_bd_b", list(config->target_modules_bd_b())},
          {"nblocks", config->nblocks()},
          {"match_strict", config->match_strict()}};
}

void check_bdlora(const LoraConfig& config) {
  const BdLoraConfig& bd = *config.use_bdlora();
  const auto& a = bd.target_modules_bd_a();
  const auto& b = bd.target_modules_bd_b();
  if (a && b) {
    const bool overlap =
        std::any_of(a->begin(), a->end(), [&](const std::string& p) { return std::count(b->begin(), b->end(), p) > 0; });
    if (overlap) {
      throw ConfigError("Found overlapping modules in target_modules_bd lists:" + python_repr(a) + " (A) and " +
                        python_repr(b) + " (B).");
    }
  }
  if (bd.nblocks() < 1) {
    throw ConfigError("use_bdlora.nblocks must be a positive integer, got " + std::to_string(bd.nblocks()));
  }
  // Python's layers know BD-LoRA alone: a second variant on the same adapter has no implementation. Python names
  // the requested variants as a sorted tuple.
  std::vector<std::string> variants{"use_bdlora"};
  if (config.use_dora()) variants.push_back("use_dora");
  if (is_mica(config.init_lora_weights())) variants.push_back("mica");
  if (config.alora_invocation_tokens() && !config.alora_invocation_tokens()->empty()) {
    variants.push_back("alora_invocation_tokens");
  }
  if (config.arrow_config()) variants.push_back("arrow_config");
  if (variants.size() > 1) {
    std::sort(variants.begin(), variants.end());
    std::string tuple = "(";
    for (size_t i = 0; i < variants.size(); ++i) tuple += (i ? ", '" : "'") + variants[i] + "'";
    throw ConfigError("Invalid or unsupported variant combination: " + tuple + ")");
  }
}

BdLoraRole bdlora_role(const LoraConfig& config, const BaseLayer& base, const std::string& name, int64_t r) {
  const BdLoraConfig& bd = *config.use_bdlora();
  if (!base.is_linear()) {
    // Python's lora.Embedding, lora.ConvNd and lora.MultiheadAttention have no BD-LoRA variant.
    throw ConfigError("Invalid or unsupported variant combination: ('use_bdlora',): BD-LoRA adapts Linear layers "
                      "only, '" + name + "' is a " + layer_kind_name(base.kind));
  }
  BdLoraRole role;
  role.block_A = matches_any(bd.target_modules_bd_a(), name);
  role.block_B = matches_any(bd.target_modules_bd_b(), name);
  if (role.block_A && role.block_B) {
    throw ConfigError("Target " + name + " matches both A and B block-diagonal patterns");
  }
  if (bd.match_strict() && !role.any()) {
    throw ConfigError("Target " + name +
                      " matches neither A nor B block-diagonal patterns.If this is intentional, set match_strict=False "
                      "in BdLoraConfig during initialization. ");
  }
  if (role.block_A) check_divisible(base.in_features, r, bd.nblocks(), name, "lora_A");
  if (role.block_B) {
    check_divisible(r, base.out_features, bd.nblocks(), name, "lora_B");
    // Python's BlockDiagonalLinear has no bias: lora_bias would be dropped in forward and break merging.
    if (config.lora_bias()) {
      throw ConfigError("lora_bias=True is not supported with a block-diagonal lora_B ('" + name +
                        "'): Python PEFT's BlockDiagonalLinear has no bias.");
    }
  }
  return role;
}

void make_block_diagonal(LoraAdapter& adapter, const BdLoraRole& role, int64_t nblocks, const BaseLayer& base,
                         const at::TensorOptions& options) {
  at::NoGradGuard no_grad;
  const bool meta = options.device().is_meta();
  if (role.block_A) {
    auto A = make_linear(base.in_features / nblocks, adapter.r, false, options);
    if (!meta) torch::nn::init::kaiming_uniform_(A->weight);  // Python's default a=0, not LoRA's sqrt(5)
    adapter.A = A;
    adapter.linear_A = A.get();
    adapter.bd_blocks_A = nblocks;
  } else if (role.block_B) {
    auto B = make_linear(adapter.r / nblocks, base.out_features, false, options);
    if (!meta) B->weight.zero_();
    adapter.B = B;
    adapter.linear_B = B.get();
    adapter.bd_blocks_B = nblocks;
  }
}

at::Tensor block_diagonal_linear(const at::Tensor& x, const at::Tensor& weight, int64_t nblocks) {
  const int64_t out = weight.size(0);
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = out;
  const at::Tensor blocks_in = x.reshape({-1, nblocks, x.size(-1) / nblocks});
  const at::Tensor w = weight.reshape({nblocks, out / nblocks, weight.size(1)});
  return at::einsum("bim,inm->bin", {blocks_in, w}).reshape(sizes);
}

at::Tensor block_diagonal_matrix(const at::Tensor& weight, int64_t nblocks) {
  return at::block_diag(weight.chunk(nblocks, 0));
}

at::Tensor bdlora_branch(const LoraAdapter& a, const at::Tensor& x) {
  const at::Tensor& A = a.linear_A->weight;
  const at::Tensor& B = a.linear_B->weight;
  const at::Tensor hidden = a.bd_blocks_A ? block_diagonal_linear(x, A, a.bd_blocks_A) : at::linear(x, A);
  if (a.bd_blocks_B) return block_diagonal_linear(hidden, B, a.bd_blocks_B);
  return at::linear(hidden, B, a.lora_bias ? a.linear_B->bias : at::Tensor());
}

}  // namespace peft::detail::lora
