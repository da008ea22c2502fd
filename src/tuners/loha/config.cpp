#include <peft/tuners/loha/config.h>

#include "tuners/common/lycoris.h"

namespace peft {

void LoHaConfig::validate() const {
  PeftConfig::validate();
  detail::validate_lycoris(r_, rank_dropout_, module_dropout_, rank_pattern_);
}

}  // namespace peft
