// VB-LoRA's registration: Python PEFT's VBLoRAConfig fields, the layers it adapts, the vector bank shared by all
// layers of an adapter, and the save_only_topk_weights checkpoint format.

#include <peft/error.h>

#include "tuners/vblora/layer.h"
#include "tuners/vblora/topk_checkpoint.h"

namespace peft::detail::vblora {
namespace {

/// Python's update_layer check, whose text differs from positive()'s.
std::function<void(const std::string&, const int64_t&)> positive_value() {
  return [](const std::string& name, const int64_t& value) {
    if (value <= 0) throw ConfigError("`" + name + "` " + std::to_string(value) + " should be a positive integer value");
  };
}

class VBLoRA final : public MethodOf<VBLoRAConfig> {
 public:
  VBLoRA() : MethodOf("vblora_") {
    layers({LayerKind::Linear, LayerKind::LinearLike});
    field(PEFT_FIELD(r)).check(positive_value());
    field(PEFT_FIELD(num_vectors)).check(positive());
    field(PEFT_FIELD(vector_length)).check(positive());
    field(PEFT_FIELD(topk)).check(positive_value());
    field(PEFT_FIELD(save_only_topk_weights));
    field(PEFT_FIELD(vblora_dropout)).check(probability());
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(bias)).check(bias_choice("vblora_only"));
    field(PEFT_FIELD(init_vector_bank_bound));
    field(PEFT_FIELD(init_logits_std));
    shares("vblora_vector_bank");  // Python's tuner holds it; saved as "base_model.vblora_vector_bank"
    rank_keys({{"vblora_logits_A", 0}, {"vblora_logits_B", 1}, {"vblora_logits_A_topk_indices", 0},
               {"vblora_logits_B_topk_indices", 1}});
    rank_fields({"r", "", "", ""});
  }

  std::unique_ptr<AdapterBuilder> start(VBLoRAConfig& config) const override { return make_builder(*this, config); }

  void adjust_checkpoint(const PeftConfig& config, StateDict& state_dict) const override {
    const auto& c = static_cast<const VBLoRAConfig&>(config);
    if (c.save_only_topk_weights()) state_dict = to_topk_checkpoint(state_dict, c.topk(), c.num_vectors());
  }

  std::optional<StateDict> checkpoint_for_load(const PeftConfig& config, const StateDict& state_dict) const override {
    const auto& c = static_cast<const VBLoRAConfig&>(config);
    if (!c.save_only_topk_weights()) return std::nullopt;
    return from_topk_checkpoint(state_dict, c.num_vectors());
  }

 protected:
  void check(const VBLoRAConfig& config) const override {
    // Python fails in the first forward (torch.topk) instead.
    if (config.topk() > config.num_vectors()) {
      throw ConfigError("`topk` " + std::to_string(config.topk()) + " must not exceed `num_vectors` " +
                        std::to_string(config.num_vectors()) + ": each sub-vector mixes topk of the bank's vectors");
    }
  }
};

}  // namespace
}  // namespace peft::detail::vblora

PEFT_REGISTER_METHOD(vblora, peft::detail::vblora::VBLoRA)
