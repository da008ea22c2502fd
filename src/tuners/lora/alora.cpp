// Activated LoRA in the LoRA layers: Python PEFT's ALoraLinearVariant (variants.py) and the variant resolution that
// limits it to lora.Linear.

#include "tuners/lora/alora.h"

#include <algorithm>
#include <vector>

#include <ATen/ops/arange.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>

#include <peft/error.h>

#include "tuners/lora/init.h"
#include "tuners/lora/layer.h"

namespace peft::detail::lora {
namespace {

thread_local const AloraScope::State* tls_alora_state = nullptr;

}  // namespace

const AloraScope::State* current_alora_state() { return tls_alora_state; }
void set_current_alora_state(const AloraScope::State* state) { tls_alora_state = state; }

bool is_alora(const LoraConfig& config) {
  return config.alora_invocation_tokens() && !config.alora_invocation_tokens()->empty();
}

void check_alora_layer(const LoraConfig& config, LayerKind kind, const std::string& module_name) {
  if (!is_alora(config)) return;
  // Python's requested variant keys, sorted; lora.Linear maps ("alora_invocation_tokens",) alone to aLoRA, the other
  // layer classes have no aLoRA entry at all.
  std::vector<std::string> keys{"alora_invocation_tokens"};
  if (is_mica(config.init_lora_weights())) keys.push_back("mica");
  if (config.use_bdlora()) keys.push_back("use_bdlora");
  if (config.use_dora()) keys.push_back("use_dora");
  const bool linear = kind == LayerKind::Linear || kind == LayerKind::LinearLike;
  if (linear && keys.size() == 1) return;
  std::string tuple = "(";
  for (size_t i = 0; i < keys.size(); ++i) tuple += (i ? ", '" : "'") + keys[i] + "'";
  tuple += keys.size() == 1 ? ",)" : ")";
  throw ConfigError("Invalid or unsupported variant combination: " + tuple + " (layer '" + module_name + "', a " +
                    layer_kind_name(kind) + "; aLoRA adapts Linear layers only, without DoRA, MiCA or BD-LoRA)");
}

const AloraOffsets* alora_offsets_for(const AdapterLayer& layer) {
  const AloraScope::State* state = tls_alora_state;
  return state && state->layers.count(&layer) ? &state->offsets : nullptr;
}

at::Tensor alora_forward(const LoraAdapter& a, const at::Tensor& x, const at::Tensor& result,
                         const AloraOffsets* offsets, const std::string& module_name) {
  // Python reads (batch, tokens, out) or, for any other rank, T = 1: only 2-D outputs then line up with the mask.
  TORCH_CHECK(result.dim() == 2 || result.dim() == 3, "aLoRA adapter '", a.name, "' on '", module_name,
              "' needs inputs of shape (batch, tokens, features) or (batch, features); the layer's output has shape ",
              result.sizes());
  const int64_t batch = result.size(0);
  const int64_t tokens = result.dim() == 3 ? result.size(1) : 1;
  const int64_t out = result.size(-1);
  std::vector<int64_t> active(static_cast<size_t>(batch), 0);
  if (!offsets) {
    TORCH_WARN_ONCE("aLoRA adapter '", a.name, "' on '", module_name,
                    "' ran without token offsets, so it adds nothing (Python PEFT's alora_offsets=None). Run the "
                    "forward inside `peft::AloraScope scope(model, input_ids);` (<peft/tuners/lora/alora.h>) for the "
                    "adapter to act from its invocation tokens on.");
  } else {
    TORCH_CHECK(static_cast<int64_t>(offsets->size()) == batch, "aLoRA adapter '", a.name, "' on '", module_name,
                "': the AloraScope has ", offsets->size(), " offsets for a batch of ", batch, " rows");
    // Python: None -> 0, otherwise min(offset, T).
    for (size_t i = 0; i < active.size(); ++i) {
      if ((*offsets)[i]) active[i] = std::min(*(*offsets)[i], tokens);
    }
  }
  const at::TensorOptions longs = at::TensorOptions().dtype(at::kLong).device(result.device());
  const at::Tensor count = at::tensor(active, at::kLong).to(result.device());
  const at::Tensor positions = at::arange(tokens, longs).unsqueeze(0);
  const at::Tensor mask = positions.ge((tokens - count).unsqueeze(1)).reshape({-1});
  // The selected tokens (Python's boolean indexing), in order.
  const at::Tensor rows = mask.nonzero().squeeze(1);

  const at::Tensor& A = a.linear_A->weight;
  const at::Tensor& B = a.linear_B->weight;
  const at::Tensor x_flat = (x.scalar_type() == A.scalar_type() ? x : x.to(A.scalar_type())).reshape({-1, x.size(-1)});
  at::Tensor selected = x_flat.index_select(0, rows);
  if (a.dropout_impl) selected = a.dropout_impl->forward(selected);
  const at::Tensor update = at::linear(at::linear(selected, A), B, a.lora_bias ? a.linear_B->bias : at::Tensor()) * a.scaling;
  // Python's `res_flat[mask] += update`: the sum in the promoted dtype, stored in the result's.
  const at::Tensor res_flat = result.reshape({-1, out});
  const at::Tensor updated = (res_flat.index_select(0, rows) + update).to(res_flat.scalar_type());
  return res_flat.index_copy(0, rows, updated).view(result.sizes());
}

void alora_forward_rows(const LoraAdapter& a, const at::Tensor& x, at::Tensor& result, const at::Tensor& rows,
                        const at::Tensor& index, const AloraOffsets* offsets, const std::string& module_name) {
  AloraOffsets picked;
  if (offsets) {
    TORCH_CHECK(static_cast<int64_t>(offsets->size()) == x.size(0), "aLoRA adapter '", a.name, "' on '", module_name,
                "': the AloraScope has ", offsets->size(), " offsets for a batch of ", x.size(0), " rows");
    const at::Tensor cpu_rows = rows.to(at::kCPU, at::kLong).contiguous();
    const int64_t* row = cpu_rows.data_ptr<int64_t>();
    for (int64_t i = 0; i < cpu_rows.numel(); ++i) picked.push_back((*offsets)[static_cast<size_t>(row[i])]);
  }
  const at::Tensor updated =
      alora_forward(a, x.index_select(0, index), result.index_select(0, index), offsets ? &picked : nullptr, module_name);
  result.index_copy_(0, index, updated.to(result.scalar_type()));
}

}  // namespace peft::detail::lora
