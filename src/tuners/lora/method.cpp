// LoRA's registration: Python PEFT's LoraConfig fields, their checks, and the layers LoRA adapts.

#include <peft/error.h>

#include "tuners/lora/builder.h"
#include "tuners/lora/init.h"
#include "tuners/lora/lora_family.h"

namespace peft::detail::lora {
namespace {

class Lora final : public LoraFamilyMethod<LoraConfig> {
 public:
  Lora() : LoraFamilyMethod("lora_") {
    layers({LayerKind::Linear, LayerKind::Embedding, LayerKind::Conv1d, LayerKind::Conv2d, LayerKind::Conv3d,
            LayerKind::LinearLike, LayerKind::MultiheadAttention});
    field(PEFT_FIELD(r)).check(positive());
    field(PEFT_FIELD(lora_alpha)).python_int();
    field(PEFT_FIELD(lora_dropout)).check(probability_below_one());
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(bias)).check(bias_choice("lora_only"));
    field(PEFT_FIELD(use_rslora));
    field(PEFT_FIELD(init_lora_weights)).check([](const std::string&, const InitLoraWeights& init) {
      if (!init.is_bool() && !is_supported_init(init.method())) {
        throw ConfigError("init_lora_weights='" + init.method() +
                          "' is not supported by peft-cpp (supported: true, false, \"gaussian\", \"orthogonal\", "
                          "\"pissa\", \"pissa_niter_<n>\", \"olora\", \"mica\", \"eva\", \"lora_ga\"; \"corda\" and \"loftq\" need "
                          "data peft-cpp does not have: initialise in Python and load the adapter)");
      }
    });
    field(PEFT_FIELD(rank_pattern)).check(positive_values());
    field(PEFT_FIELD(alpha_pattern));
    field(PEFT_FIELD(use_dora));
    field(PEFT_FIELD(lora_bias));
    field(PEFT_FIELD(target_parameters)).check([](const std::string&, const std::optional<std::vector<std::string>>& v) {
      if (v && !v->empty()) {
        throw ConfigError("`target_parameters` (adapting nn.Parameters directly) is not supported by peft-cpp; "
                          "use `target_modules`.");
      }
    });
    python_only_lora_fields();
    embedding_containers({"lora_embedding_A", "lora_embedding_B"});
    rank_keys({{"lora_A.weight", 0}, {"lora_B.weight", 1}, {"lora_embedding_A", 0}, {"lora_embedding_B", 1}});
    rank_fields({"r", "rank_pattern", "lora_alpha", "alpha_pattern"});
  }

  std::unique_ptr<AdapterBuilder> start(LoraConfig& config) const override { return make_builder(*this, config); }

 protected:
  void check(const LoraConfig& c) const override {
    if (!c.lora_bias()) return;
    if (!c.init_lora_weights().is_bool()) {
      throw ConfigError("The argument lora_bias=True is only supported with init_lora_weights=True or False, got "
                        "init_lora_weights=" + c.init_lora_weights().method() + " instead.");
    }
    if (c.use_dora()) throw ConfigError("The argument lora_bias=True is not supported for DoRA, please pass use_dora=False");
  }
};

}  // namespace
}  // namespace peft::detail::lora

PEFT_REGISTER_METHOD(lora, peft::detail::lora::Lora)
