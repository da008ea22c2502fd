#include <peft/tuners/hra/config.h>

#include "tuners/common/config_checks.h"

namespace peft {

void HRAConfig::validate() const {
  PeftConfig::validate();
  detail::check_positive("r", r_);
  detail::check_bias(bias_, "hra_only");
}

}  // namespace peft
