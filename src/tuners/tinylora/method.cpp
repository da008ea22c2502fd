// TinyLoRA's registration: Python PEFT's TinyLoraConfig fields and their checks (with Python's texts), the layers
// it adapts, the trained vectors an adapter's layers share, and the checks Python makes across adapters and on load.
//
// Python keeps one trained vector per group of layers on the tuner, saved as "base_model.tinylora_v.<group>". Here
// the adapter's vectors are the rows of one (groups x u) tensor that every layer registers (Method::shares) and
// reads its own row of; checkpoints split it into Python's per-group keys and loading stacks them back.

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <ATen/ops/stack.h>

#include <peft/error.h>

#include "tuners/tinylora/layer.h"

namespace peft::detail::tinylora {
namespace {

const std::string kVectorKey = "base_model.tinylora_v";

/// A number as Python's f-string shows it (1.5, -0.1, 2.0).
std::string python_number(double value) { return nlohmann::json(value).dump(); }

/// The group of a "base_model.tinylora_v.<group>" key, or -1 for any other key.
int64_t group_of_key(const std::string& key) {
  if (key.compare(0, kVectorKey.size() + 1, kVectorKey + ".") != 0) return -1;
  const std::string rest = key.substr(kVectorKey.size() + 1);
  if (rest.empty() || rest.size() > 9 || rest.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(rest);
}

class TinyLora final : public MethodOf<TinyLoraConfig> {
 public:
  TinyLora() : MethodOf("tinylora_") {
    layers({LayerKind::Linear, LayerKind::LinearLike, LayerKind::Embedding});
    field(PEFT_FIELD(r)).check(positive());
    field(PEFT_FIELD(u)).check(positive());
    field(PEFT_FIELD(weight_tying)).check([](const std::string& name, const double& value) {
      if (!(value >= 0.0 && value <= 1.0)) {
        throw ConfigError("`" + name + "` should be a float between 0.0 and 1.0 but the value passed is " +
                          python_number(value));
      }
    });
    field(PEFT_FIELD(projection_seed));
    field(PEFT_FIELD(save_projection));
    field(PEFT_FIELD(init_v_bound));
    field(PEFT_FIELD(tinylora_dropout)).check(probability());
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(bias)).check(bias_choice("tinylora_only"));
    field(PEFT_FIELD(init_weights)).check(init_choice({"uniform"}));
    without_common_fields({"exclude_modules"});
    // Python's tuner holds the vectors; always saved, as "base_model.tinylora_v.<group>" (adjust_checkpoint).
    shares_by_rows("tinylora_v");
    embedding_containers({});
    rank_keys({{"tinylora_A", 0}, {"tinylora_B", 1}});
    rank_fields({"r", "", "", ""});
  }

  std::unique_ptr<AdapterBuilder> start(TinyLoraConfig& config) const override { return make_builder(*this, config); }

  bool checks_other_adapters() const override { return true; }

  // Python's TinyLoraModel._check_new_adapter_config: a layer's P is saved for all its adapters or for none.
  void check_new_adapter(const PeftConfig& base, const std::vector<std::shared_ptr<const PeftConfig>>& others) const override {
    const auto& config = static_cast<const TinyLoraConfig&>(base);
    for (const auto& other : others) {
      if (other->peft_type() != peft_type()) continue;
      if (static_cast<const TinyLoraConfig&>(*other).save_projection() != config.save_projection()) {
        throw ConfigError("TinyLoRA projection tensors must be saved for all adapters or none, but got multiple "
                          "different values: [False, True]");
      }
    }
  }

  // The model's (groups x u) tensor becomes Python's one key per group.
  void adjust_checkpoint(const PeftConfig&, StateDict& state_dict) const override {
    if (!state_dict.contains(kVectorKey)) return;
    StateDict out;
    for (const auto& item : state_dict) {
      if (item.key() != kVectorKey) {
        out.insert(item.key(), item.value());
        continue;
      }
      const at::Tensor& rows = item.value();
      for (int64_t g = 0; g < rows.size(0); ++g) out.insert(vector_key(g), rows.select(0, g));
    }
    state_dict = std::move(out);
  }

  // Python's TinyLoraModel._remap_adapter_state_dict_for_load: its warnings about P; and the per-group vectors
  // stacked into the model's one tensor.
  std::optional<StateDict> checkpoint_for_load(const PeftConfig& base, const StateDict& state_dict) const override {
    const auto& config = static_cast<const TinyLoraConfig&>(base);
    bool has_projection = false;
    std::vector<at::Tensor> rows;
    std::vector<bool> seen;
    for (const auto& item : state_dict) {
      if (item.key().find(".tinylora_P") != std::string::npos) has_projection = true;
      const int64_t group = group_of_key(item.key());
      if (group < 0) continue;
      if (group >= static_cast<int64_t>(rows.size())) rows.resize(group + 1), seen.resize(group + 1, false);
      rows[group] = item.value();
      seen[group] = true;
    }
    if (config.save_projection() && !has_projection) {
      TORCH_WARN("Specified to load tinylora_P from state dictionary however it was not present! Projection tensors "
                 "will be regenerated from the projection_seed.");
    } else if (!config.save_projection() && has_projection) {
      TORCH_WARN("Specified to not load tinylora_P from state dictionary however they are present in state "
                 "dictionary! Consider using them to ensure checkpoint loading is correct on all platforms using "
                 "`peft_config.save_projection = True`");
    } else if (!config.save_projection()) {
      TORCH_WARN("Specified to not load tinylora_P from state dictionary. This means we will be relying on PRNG "
                 "initialisation to restore these projections using `config.projection_seed`, which may not be "
                 "accurate on all system configurations.");
    }
    if (rows.empty()) return std::nullopt;
    for (size_t g = 0; g < rows.size(); ++g) {
      if (!seen[g]) {
        throw StateDictError("The checkpoint holds TinyLoRA vectors up to '" + vector_key(static_cast<int64_t>(rows.size()) - 1) +
                             "' but not '" + vector_key(static_cast<int64_t>(g)) + "'.");
      }
      if (!rows[g].defined() || rows[g].dim() != 1 || !rows[g].sizes().equals(rows[0].sizes())) {
        throw StateDictError("The TinyLoRA vectors of the checkpoint ('" + kVectorKey + ".<group>') must be 1-d and of "
                             "one length; '" + vector_key(static_cast<int64_t>(g)) + "' is not.");
      }
    }
    StateDict out;
    bool placed = false;
    for (const auto& item : state_dict) {
      if (group_of_key(item.key()) < 0) {
        out.insert(item.key(), item.value());
      } else if (!placed) {
        out.insert(kVectorKey, at::stack(rows));
        placed = true;
      }
    }
    return out;
  }

 protected:
  void check(const TinyLoraConfig& config) const override {
    if (!config.save_projection()) {
      TORCH_WARN("Specified to not save projection tensors P within the state dictionary. They will be restored using "
                 "the PRNG key stored in `config.projection_seed`. Consider setting `config.save_projection` to `True` "
                 "to guarantee restoring the checkpoint correctly on all system configurations.");
    }
  }
};

}  // namespace

std::string vector_key(int64_t group) { return kVectorKey + "." + std::to_string(group); }

}  // namespace peft::detail::tinylora

PEFT_REGISTER_METHOD(tinylora, peft::detail::tinylora::TinyLora)
