#pragma once

// BD-LoRA (Python PEFT's BdLoraConfig, BdLoraLinearVariant and BlockDiagonalLinear): on a Linear layer one factor is
// block-diagonal. Its weight is stored as Python stores it, the blocks stacked along the rows: lora_A
// (r, in / nblocks) whose i-th (r / nblocks) rows map the i-th slice of the input, or lora_B (out, r / nblocks).

#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <peft/tuners/lora/config.h>

#include "core/json_config.h"
#include "core/layer_kinds.h"

namespace peft::detail::lora {

struct LoraAdapter;

/// Which factor of one layer's adapter is block-diagonal (Python's BdLoraLinearVariant.init).
struct BdLoraRole {
  bool block_A = false;
  bool block_B = false;
  bool any() const { return block_A || block_B; }
};

/// "use_bdlora" of adapter_config.json: null, or Python's asdict of BdLoraConfig.
std::optional<BdLoraConfig> read_bdlora(JsonConfigReader& in);
nlohmann::json write_bdlora(const std::optional<BdLoraConfig>& config);

/// What Python checks when the config is made (BdLoraConfig.__post_init__, the LoRA variant combinations) and a
/// positive nblocks; throws ConfigError.
void check_bdlora(const LoraConfig& config);

/// The role of the layer `module_name` of kind `kind`, with Python's errors for a layer BD-LoRA cannot adapt, one
/// matching both lists or (match_strict) neither, and sizes nblocks does not divide; throws ConfigError.
BdLoraRole bdlora_role(const LoraConfig& config, const BaseLayer& base, const std::string& module_name, int64_t r);

/// Replaces the block-diagonal factor of a freshly initialised adapter by its block-diagonal form, initialised as
/// Python's BlockDiagonalLinear (lora_A kaiming-uniform, drawn after the plain init as in Python; lora_B zeros).
void make_block_diagonal(LoraAdapter& adapter, const BdLoraRole& role, int64_t nblocks, const BaseLayer& base,
                         const at::TensorOptions& options);

/// x (..., in) through a block-diagonal weight stored as its stacked blocks (out, in / nblocks): Python's
/// BlockDiagonalLinear.forward.
at::Tensor block_diagonal_linear(const at::Tensor& x, const at::Tensor& weight, int64_t nblocks);
/// The full (out, in) matrix, zeros off the diagonal blocks (Python's weight_as_blockdiagonal_matrix).
at::Tensor block_diagonal_matrix(const at::Tensor& weight, int64_t nblocks);

/// B(A(x)) (lora_B's bias included) for an adapter with a block-diagonal factor, unscaled.
at::Tensor bdlora_branch(const LoraAdapter& adapter, const at::Tensor& x);

}  // namespace peft::detail::lora
