// AdaLoRA's registration: Python PEFT's AdaLoraConfig fields (a LoraConfig), the layers it adapts, and
// what it adds to the shared machinery: one trainable adapter per model, checkpoints of the kept ranks.

#include <algorithm>

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <peft/error.h>

#include "tuners/adalora/layer.h"
#include "tuners/lora/lora_family.h"

namespace peft::detail::adalora {
namespace {

// rank_pattern: {"<module>.lora_E": [kept, ...]} (lists of booleans), or null.
void read_rank_pattern(JsonConfigReader& in, AdaLoraConfig& config) {
  const nlohmann::json* raw = in.raw("rank_pattern");
  if (!raw) return;
  if (!raw->is_object()) in.fail("rank_pattern", "must be null or an object of boolean lists");
  AdaLoraRankPattern pattern;
  for (const auto& [key, value] : raw->items()) {
    if (!value.is_array()) in.fail("rank_pattern", "entry '" + key + "' must be a list of booleans");
    std::vector<bool> kept;
    for (const auto& flag : value) {
      if (!flag.is_boolean()) in.fail("rank_pattern", "entry '" + key + "' must be a list of booleans");
      kept.push_back(flag.get<bool>());
    }
    pattern[key] = std::move(kept);
  }
  config.rank_pattern(std::move(pattern));
}

nlohmann::json write_rank_pattern(const AdaLoraConfig& config) {
  if (!config.rank_pattern()) return nullptr;
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [key, kept] : *config.rank_pattern()) out[key] = kept;
  return out;
}

class AdaLora final : public LoraFamilyMethod<AdaLoraConfig> {
 public:
  AdaLora() : LoraFamilyMethod("lora_") {
    layers({LayerKind::Linear, LayerKind::Conv2d, LayerKind::LinearLike});
    field(PEFT_FIELD(init_r)).check([](const std::string&, const int64_t& value) {
      if (value < 0) throw ConfigError("`init_r` should be a positive integer or 0, but the value passed is " + std::to_string(value));
    });
    field(PEFT_FIELD(target_r));
    field(PEFT_FIELD(tinit));
    field(PEFT_FIELD(tfinal));
    field(PEFT_FIELD(deltaT)).check(positive());
    field(PEFT_FIELD(beta1));
    field(PEFT_FIELD(beta2));
    field(PEFT_FIELD(orth_reg_weight)).check([](const std::string&, const double& value) {
      if (value < 0) {
        throw ConfigError("`orth_reg_weight` should be greater than or equal to 0, but the value passed is " +
                          std::to_string(value));
      }
    });
    field(PEFT_FIELD(total_step));
    custom("rank_pattern", read_rank_pattern, write_rank_pattern);
    field(PEFT_FIELD(lora_alpha)).python_int();
    field(PEFT_FIELD(lora_dropout)).check(probability());
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(bias)).check(bias_choice("lora_only"));
    field(PEFT_FIELD(init_lora_weights));
    field(PEFT_FIELD(r));
    // LoraConfig fields AdaLoRA does not use (Python rejects DoRA and LoftQ for AdaLoRA outright).
    unsupported("use_rslora", "AdaLoRA scales by lora_alpha / ranknum", false);
    unsupported("use_dora", "ADALORA does not support DoRA.", false);
    unsupported("lora_bias", "AdaLoRA has no lora_bias", false);
    unsupported("alpha_pattern", "AdaLoRA has no alpha_pattern", nlohmann::json::object());
    unsupported("target_parameters", "targeting parameters is not supported");
    python_only_lora_fields();
    rank_keys({{"lora_E", 0}, {"lora_A", 0}, {"lora_B", 1}});
    rank_fields({"", "", "lora_alpha", ""});
  }

  std::unique_ptr<AdapterBuilder> start(AdaLoraConfig& config) const override { return make_builder(*this, config); }

  bool checks_other_adapters() const override { return true; }

  void check_new_adapter(const PeftConfig& config,
                         const std::vector<std::shared_ptr<const PeftConfig>>& others) const override {
    int trainable = config.inference_mode() ? 0 : 1;
    for (const auto& other : others) {
      if (other->peft_type() == peft_type() && !other->inference_mode()) ++trainable;
    }
    if (trainable > 1) {
      throw ConfigError("AdaLoraModel supports only 1 trainable adapter. When using multiple adapters, set "
                        "inference_mode to True for all adapters except the one you want to train.");
    }
  }

  // Only the ranks the allocator kept are saved (Python's resize_state_dict_by_rank_pattern).
  void adjust_checkpoint(const PeftConfig& base, StateDict& state_dict) const override {
    const auto& c = static_cast<const AdaLoraConfig&>(base);
    if (!c.rank_pattern()) return;
    for (const auto& [key, kept] : *c.rank_pattern()) {
      const size_t dot = key.rfind(".lora_E");
      if (dot == std::string::npos) continue;
      const std::string prefix = key.substr(0, dot);
      std::vector<int64_t> index;
      for (size_t i = 0; i < kept.size(); ++i) {
        if (kept[i]) index.push_back(static_cast<int64_t>(i));
      }
      const auto rank = static_cast<int64_t>(index.size());
      for (const char* name : {"lora_E", "lora_A", "lora_B"}) {
        at::Tensor* t = state_dict.find(prefix + "." + name);
        if (!t) continue;
        const int64_t dim = std::string(name) == "lora_B" ? 1 : 0;
        if (t->size(dim) == rank) continue;
        at::Tensor positions = at::empty({rank}, at::TensorOptions().dtype(at::kLong));
        std::copy(index.begin(), index.end(), positions.data_ptr<int64_t>());
        *t = t->index_select(dim, positions.to(t->device()));
      }
    }
  }

 protected:
  void check(const AdaLoraConfig& c) const override {
    if (c.r() != 8) {
      TORCH_WARN("Note that `r` is not used in AdaLora and will be ignored. If you intended to set the initial rank, "
                 "use `init_r` instead.");
    }
    if (!c.total_step() || *c.total_step() <= 0) {
      throw ConfigError("AdaLoRA does not work when `total_step` is None, supply a value > 0.");
    }
    if (c.tinit() >= *c.total_step() - c.tfinal()) {
      throw ConfigError("The supplied schedule values don't allow for a budgeting phase. Decrease `tfinal`/`tinit` or "
                        "increase `total_step`.");
    }
  }
};

}  // namespace
}  // namespace peft::detail::adalora

PEFT_REGISTER_METHOD(adalora, peft::detail::adalora::AdaLora)
