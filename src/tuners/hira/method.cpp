// HiRA's registration: Python PEFT's HiraConfig fields and the layers it adapts.

#include <algorithm>
#include <cctype>

#include <peft/error.h>

#include "core/json_config.h"
#include "tuners/hira/layer.h"

namespace peft::detail::hira {
namespace {

class Hira final : public MethodOf<HiraConfig> {
 public:
  Hira() : MethodOf("hira_") {
    // Python: torch.nn.Linear, Embedding, Conv1d/2d/3d and transformers' Conv1D.
    layers({LayerKind::Linear, LayerKind::Embedding, LayerKind::Conv1d, LayerKind::Conv2d, LayerKind::Conv3d,
            LayerKind::LinearLike});
    field(PEFT_FIELD(r)).check(positive());
    // Python's nn.Dropout refuses other values when the layer is created.
    field(PEFT_FIELD(hira_dropout)).check(probability());
    field(PEFT_FIELD(fan_in_fan_out));
    custom(
        "init_weights",
        [](JsonConfigReader& in, HiraConfig& config) {
          // Python's None initialises Linear and Conv layers like false but Embeddings like true.
          if (in.has("init_weights") && !in.raw("init_weights")) {
            throw ConfigError("HiraConfig's init_weights null is not supported (Python PEFT treats it as false for "
                              "Linear and Conv layers and as true for Embeddings); use true, false or \"gaussian\".");
          }
          config.init_weights(in.get_init("init_weights", config.init_weights()));
        },
        [](const HiraConfig& config) { return init_to_json(config.init_weights()); });
    field(PEFT_FIELD(rank_pattern)).check(positive_values());
    embedding_containers({"hira_embedding_A", "hira_embedding_B"});
    rank_keys({{"hira_A", 0}, {"hira_B", 1}, {"hira_embedding_A", 0}, {"hira_embedding_B", 1}});
    // Not rank_pattern: a layer's first HiRA adapter has rank r whatever the pattern says (as in Python).
    rank_fields({"r", "", "", ""});
  }

  std::unique_ptr<AdapterBuilder> start(HiraConfig& config) const override { return make_builder(*this, config); }

 protected:
  void check(const HiraConfig& config) const override {
    const InitWeights& init = config.init_weights();
    if (init.is_bool()) return;
    std::string lower = init.method();
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    // Python accepts any case of "gaussian" (it compares init_weights.lower()).
    if (lower != "gaussian") throw ConfigError("Unknown initialization init_weights='" + init.method() + "'");
  }
};

}  // namespace
}  // namespace peft::detail::hira

PEFT_REGISTER_METHOD(hira, peft::detail::hira::Hira)
