// PSOFT's registration: Python PEFT's PsoftConfig fields, its __post_init__ checks and warnings, and the layers
// it adapts.

#include <c10/util/Exception.h>

#include <peft/error.h>

#include "core/json_config.h"
#include "tuners/psoft/layer.h"

namespace peft::detail::psoft {
namespace {

std::string python_repr(const std::string& text) { return "'" + text + "'"; }

class Psoft final : public MethodOf<PsoftConfig> {
 public:
  Psoft() : MethodOf("psoft_") {
    // Python: torch.nn.Linear only.
    layers({LayerKind::Linear});
    field(PEFT_FIELD(r));
    field(PEFT_FIELD(psoft_alpha)).python_int();
    // Python's nn.Dropout refuses other values when the layer is created.
    field(PEFT_FIELD(psoft_dropout)).check(probability());
    field(PEFT_FIELD(fan_in_fan_out));
    field(PEFT_FIELD(ab_svd_init));
    field(PEFT_FIELD(psoft_svd));
    field(PEFT_FIELD(psoft_svd_lowrank_niter));
    field(PEFT_FIELD(random_seed));
    field(PEFT_FIELD(psoft_orth));
    field(PEFT_FIELD(psoft_mag_b));
    field(PEFT_FIELD(psoft_mag_a));
    field(PEFT_FIELD(use_cayley_neumann));
    field(PEFT_FIELD(num_cayley_neumann_terms));
    custom(
        "cayley_neumann_eps",
        [](JsonConfigReader& in, PsoftConfig& config) {
          if (!in.raw("cayley_neumann_eps")) {
            config.cayley_neumann_eps(std::nullopt);
            return;
          }
          config.cayley_neumann_eps(in.get_number("cayley_neumann_eps", 0.0));
        },
        [](const PsoftConfig& config) {
          return config.cayley_neumann_eps() ? nlohmann::json(*config.cayley_neumann_eps()) : nlohmann::json();
        });
    field(PEFT_FIELD(init_weights));
  }

  std::unique_ptr<AdapterBuilder> start(PsoftConfig& config) const override { return make_builder(*this, config); }

 protected:
  /// Python's PsoftConfig.__post_init__ (the target / layer checks shared by all configs run elsewhere).
  void check(const PsoftConfig& config) const override {
    if (config.r() <= 0) throw ConfigError("`r` must be a positive integer; got " + std::to_string(config.r()) + ".");
    if (config.ab_svd_init() != "psoft_init" && config.ab_svd_init() != "pissa_init") {
      throw ConfigError("`ab_svd_init` must be one of ['pissa_init', 'psoft_init']; got " +
                        python_repr(config.ab_svd_init()) + ".");
    }
    if (config.psoft_svd() != "full" && config.psoft_svd() != "lowrank") {
      throw ConfigError("`psoft_svd` must be one of ['full', 'lowrank']; got " + python_repr(config.psoft_svd()) + ".");
    }
    if (config.psoft_svd() != "lowrank" && config.psoft_svd_lowrank_niter() != 10) {
      TORCH_WARN("`psoft_svd_lowrank_niter` is only used when `psoft_svd='lowrank'`. Got psoft_svd=",
                 python_repr(config.psoft_svd()), ", so psoft_svd_lowrank_niter=", config.psoft_svd_lowrank_niter(),
                 " will be ignored.");
    }
    if (config.use_cayley_neumann()) {
      if (config.num_cayley_neumann_terms() <= 0) {
        throw ConfigError("`num_cayley_neumann_terms` must be a positive integer; got " +
                          std::to_string(config.num_cayley_neumann_terms()) + ".");
      }
      const std::optional<double>& eps = config.cayley_neumann_eps();
      if (eps && !(*eps > 0.0 && *eps < 1.0)) {
        throw ConfigError("`cayley_neumann_eps` must be in (0, 1) when set; got " + nlohmann::json(*eps).dump() + ".");
      }
    } else {
      if (config.num_cayley_neumann_terms() != 5) {
        TORCH_WARN("`num_cayley_neumann_terms` is only used when `use_cayley_neumann=True`. Since "
                   "`use_cayley_neumann=False`, `num_cayley_neumann_terms=",
                   config.num_cayley_neumann_terms(), "` will be ignored.");
      }
      if (config.cayley_neumann_eps()) {
        TORCH_WARN("`cayley_neumann_eps` is only used when `use_cayley_neumann=True`. Since `use_cayley_neumann=False`, "
                   "`cayley_neumann_eps=",
                   nlohmann::json(*config.cayley_neumann_eps()).dump(), "` will be ignored.");
      }
    }
  }
};

}  // namespace
}  // namespace peft::detail::psoft

PEFT_REGISTER_METHOD(psoft, peft::detail::psoft::Psoft)
