// aLoRA's offsets (Python PEFT's calculate_alora_offsets) and the scope that hands them to the layers in place of
// Python's `alora_offsets` forward kwarg.

#include <peft/tuners/lora/alora.h>

#include <algorithm>

#include <c10/util/Exception.h>

#include <peft/lifecycle.h>
#include <peft/tuners/lora/config.h>

#include "core/model_adapters.h"
#include "tuners/lora/alora.h"

namespace peft {

AloraOffsets alora_offsets(ConstModuleRef model_ref, const at::Tensor& input_ids,
                           const std::vector<std::string>& adapter_names) {
  if (!input_ids.defined()) return {};  // Python: input_ids None -> []
  TORCH_CHECK(input_ids.dim() == 1 || input_ids.dim() == 2,
              "alora_offsets: input_ids must have shape (batch, tokens) or (tokens), got ", input_ids.sizes());
  TORCH_CHECK(!input_ids.is_floating_point() && !input_ids.is_complex(),
              "alora_offsets: input_ids must hold integer token ids, got ", input_ids.scalar_type());
  const at::Tensor ids = (input_ids.dim() == 1 ? input_ids.unsqueeze(0) : input_ids).to(at::kCPU, at::kLong).contiguous();
  const int64_t batch = ids.size(0);
  const int64_t length = ids.size(1);
  const torch::nn::Module& model = model_ref.get();
  const detail::ModelAdapters adapters = detail::collect_adapters(model);
  const std::vector<std::string> active = active_adapters(model);
  const std::string active_name = active.empty() ? std::string() : active.front();

  AloraOffsets offsets(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) {
    const size_t row = static_cast<size_t>(i);
    const std::string& name = row < adapter_names.size() ? adapter_names[row] : active_name;
    if (name == "__base__" || name.empty()) continue;
    if (!adapters.has(name)) {
      TORCH_WARN("Adapter '", name, "' not found in peft_config. Using base model for row ", i, ".");
      continue;
    }
    const auto* config = dynamic_cast<const LoraConfig*>(adapters.config(name).get());
    if (!config || !detail::lora::is_alora(*config)) continue;  // not an aLoRA adapter
    const std::vector<int64_t>& tokens = *config->alora_invocation_tokens();
    const int64_t n = static_cast<int64_t>(tokens.size());
    const int64_t* sequence = ids.data_ptr<int64_t>() + i * length;
    // The start of the last occurrence; the offset counts from there to the end of the row.
    for (int64_t start = length - n; start >= 0; --start) {
      if (std::equal(tokens.begin(), tokens.end(), sequence + start)) {
        offsets[row] = length - start;
        break;
      }
    }
  }
  return offsets;
}

AloraScope::AloraScope(ModuleRef model_ref, AloraOffsets offsets)
    : state_(std::make_unique<State>()), previous_(detail::lora::current_alora_state()) {
  state_->offsets = std::move(offsets);
  for (const detail::AdaptedLayer& layer : detail::adapted_layers(model_ref.get())) state_->layers.insert(layer.adapters);
  detail::lora::set_current_alora_state(state_.get());
}

AloraScope::AloraScope(ModuleRef model, const at::Tensor& input_ids) : AloraScope(model, alora_offsets(model, input_ids)) {}

AloraScope::~AloraScope() { detail::lora::set_current_alora_state(previous_); }

const AloraOffsets& AloraScope::offsets() const { return state_->offsets; }

}  // namespace peft
