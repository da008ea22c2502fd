#include <peft/tuners/adalora/config.h>

#include <c10/util/Exception.h>

#include <peft/error.h>

#include "tuners/common/config_checks.h"

namespace peft {

void AdaLoraConfig::validate() const {
  PeftConfig::validate();
  if (r_ != 8) {
    TORCH_WARN("Note that `r` is not used in AdaLora and will be ignored. If you intended to set the initial rank, "
               "use `init_r` instead.");
  }
  if (init_r_ < 0) throw ConfigError("`init_r` should be a positive integer or 0, but the value passed is " + std::to_string(init_r_));
  if (!total_step_ || *total_step_ <= 0) {
    throw ConfigError("AdaLoRA does not work when `total_step` is None, supply a value > 0.");
  }
  if (orth_reg_weight_ < 0) {
    throw ConfigError("`orth_reg_weight` should be greater than or equal to 0, but the value passed is " +
                      std::to_string(orth_reg_weight_));
  }
  if (tinit_ >= *total_step_ - tfinal_) {
    throw ConfigError("The supplied schedule values don't allow for a budgeting phase. Decrease `tfinal`/`tinit` or "
                      "increase `total_step`.");
  }
  detail::check_positive("deltaT", deltaT_);
  detail::check_probability("lora_dropout", lora_dropout_);
  detail::check_bias(bias_, "lora_only");
}

}  // namespace peft
