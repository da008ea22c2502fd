#include <peft/tuners/ln_tuning/config.h>

#include "tuners/common/config_checks.h"

namespace peft {

void LNTuningConfig::validate() const {
  PeftConfig::validate();
  detail::check_no_layer_selection(*this, "LNTuningConfig");
}

}  // namespace peft
