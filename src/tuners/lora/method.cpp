// LoRA's registration: Python PEFT's LoraConfig fields, their checks, and the layers LoRA adapts.

#include <set>

#include <peft/error.h>

#include "tuners/lora/bdlora.h"
#include "tuners/lora/arrow.h"
#include "tuners/lora/builder.h"
#include "tuners/lora/init.h"
#include "tuners/lora/layer_replication.h"
#include "tuners/lora/lora_family.h"

namespace peft::detail::lora {
namespace {

// trainable_token_indices: null, a list of token ids, or {layer: list of rows}.
void read_token_indices(JsonConfigReader& in, LoraConfig& config) {
  const nlohmann::json* value = in.raw("trainable_token_indices");
  if (!value || value->is_null()) return;
  auto ids = [&](const nlohmann::json& list, const std::string& where) {
    if (!list.is_array()) in.fail("trainable_token_indices", where + " must be a list of token ids");
    std::vector<int64_t> out;
    for (const auto& id : list) {
      if (!id.is_number_integer()) in.fail("trainable_token_indices", where + " holds " + id.dump() + ", not a token id");
      out.push_back(id.get<int64_t>());
    }
    return out;
  };
  if (value->is_array()) {
    config.trainable_token_indices(ids(*value, "the list"));
  } else if (value->is_object()) {
    std::map<std::string, std::vector<int64_t>> layers;
    for (const auto& [layer, rows] : value->items()) layers[layer] = ids(rows, "the entry '" + layer + "'");
    config.trainable_token_indices(std::move(layers));
  } else {
    in.fail("trainable_token_indices", "must be null, a list of token ids or a {layer: token ids} object");
  }
}

void check_token_indices(const LoraConfig& config) {
  if (!config.trainable_token_indices()) return;
  auto check = [](const std::vector<int64_t>& rows, const std::string& where) {
    std::set<int64_t> seen;
    for (int64_t row : rows) {
      if (row < 0) {
        throw ConfigError("trainable_token_indices" + where + ": " + std::to_string(row) + " is negative; token ids start at 0.");
      }
      if (!seen.insert(row).second) {
        throw ConfigError("trainable_token_indices" + where + " lists " + std::to_string(row) + " more than once.");
      }
    }
  };
  const TrainableTokenIndices& indices = *config.trainable_token_indices();
  if (const auto* list = std::get_if<std::vector<int64_t>>(&indices)) {
    check(*list, "");
    return;
  }
  for (const auto& [layer, rows] : std::get<std::map<std::string, std::vector<int64_t>>>(indices)) {
    if (layer.empty()) throw ConfigError("trainable_token_indices: a layer name is empty.");
    check(rows, "['" + layer + "']");
  }
}

nlohmann::json write_token_indices(const LoraConfig& config) {
  if (!config.trainable_token_indices()) return nullptr;
  return std::visit([](const auto& value) { return nlohmann::json(value); }, *config.trainable_token_indices());
}

// alora_invocation_tokens: null or a list of token ids (Python's Optional[list[int]]).
void read_alora_tokens(JsonConfigReader& in, LoraConfig& config) {
  const nlohmann::json* value = in.raw("alora_invocation_tokens");
  if (value && !value->is_null() && !value->is_array()) {
    in.fail("alora_invocation_tokens", "must be null or a list of token ids, got " + value->dump());
  }
  config.alora_invocation_tokens(in.get_int_or_list("alora_invocation_tokens"));
}

nlohmann::json write_alora_tokens(const LoraConfig& config) {
  return config.alora_invocation_tokens() ? nlohmann::json(*config.alora_invocation_tokens()) : nlohmann::json();
}

// layer_replication: null or a list of [start, end] pairs (Python's Optional[list[tuple[int, int]]]).
void read_layer_replication(JsonConfigReader& in, LoraConfig& config) {
  const nlohmann::json* value = in.raw("layer_replication");
  if (!value || value->is_null()) return;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  if (value->is_array()) {
    for (const auto& range : *value) {
      if (!range.is_array() || range.size() != 2 || !range[0].is_number_integer() || !range[1].is_number_integer()) {
        in.fail("layer_replication", "holds " + range.dump() + ", not a [start, end] pair of layer indices");
      }
      ranges.emplace_back(range[0].get<int64_t>(), range[1].get<int64_t>());
    }
    config.layer_replication(std::move(ranges));
    return;
  }
  in.fail("layer_replication", "must be null or a list of [start, end] pairs, got " + value->dump());
}

nlohmann::json write_layer_replication(const LoraConfig& config) {
  if (!config.layer_replication()) return nullptr;
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [start, end] : *config.layer_replication()) out.push_back({start, end});
  return out;
}

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
    field(PEFT_FIELD(target_parameters));
    custom("trainable_token_indices", read_token_indices, write_token_indices);
    field(PEFT_FIELD(ensure_weight_tying));
    custom("use_bdlora", [](JsonConfigReader& in, LoraConfig& c) { c.use_bdlora(read_bdlora(in)); },
           [](const LoraConfig& c) { return write_bdlora(c.use_bdlora()); });
    field(PEFT_FIELD(arrow_config));
    custom("alora_invocation_tokens", read_alora_tokens, write_alora_tokens);
    custom("layer_replication", read_layer_replication, write_layer_replication);
    python_only_lora_fields(/*lora_itself=*/true);
    embedding_containers({"lora_embedding_A", "lora_embedding_B"});
    rank_keys({{"lora_A.weight", 0}, {"lora_B.weight", 1}, {"lora_embedding_A", 0}, {"lora_embedding_B", 1}});
    rank_fields({"r", "rank_pattern", "lora_alpha", "alpha_pattern"});
  }

  std::unique_ptr<AdapterBuilder> start(LoraConfig& config) const override { return make_builder(*this, config); }

  // Python's LoraModel._prepare_model, for every injected adapter (a second one with layer_replication replicates
  // the replicated list again). An empty list replicates nothing, as Python's `if peft_config.layer_replication`.
  std::unique_ptr<ModelPreparation> prepare_model(const PeftConfig& config, torch::nn::Module& model) const override {
    const auto& map = static_cast<const LoraConfig&>(config).layer_replication();
    if (!map || map->empty()) return nullptr;
    return replicate_layers(model, *map);
  }

  // Python's _check_merge_allowed means to refuse a model with replicated layers (merging into a shared base
  // weight would add every copy's delta to all of them), but PEFT 0.20 looks "layer_replication" up among the
  // adapter names, so it merges; peft-cpp refuses, with Python's text.
  std::string merge_refusal(const PeftConfig& config) const override {
    const auto* lora = dynamic_cast<const LoraConfig*>(&config);
    if (!lora || !lora->layer_replication() || lora->layer_replication()->empty()) return {};
    return "Cannot merge LORA layers when base model layers are replicated";
  }

  bool targets_parameters(const PeftConfig& config) const override {
    const auto* lora = dynamic_cast<const LoraConfig*>(&config);
    return lora && lora->target_parameters() && !lora->target_parameters()->empty();
  }

  bool uses_trainable_tokens(const PeftConfig& config) const override {
    const auto* lora = dynamic_cast<const LoraConfig*>(&config);
    return lora && lora->trainable_token_indices();
  }

 protected:
  void check(const LoraConfig& c) const override {
    check_token_indices(c);
    if (c.use_bdlora()) check_bdlora(c);
    if (c.arrow_config()) check_arrow_lora_config(c);
    if (c.alora_invocation_tokens() && c.task_type() != std::optional<std::string>("CAUSAL_LM")) {
      TORCH_WARN("aLoRA is currently only supported for CAUSAL_LM task.");
    }
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
