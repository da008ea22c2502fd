#include <peft/tuners/lokr/config.h>

#include <peft/error.h>

#include "tuners/common/lycoris.h"

namespace peft {

void LoKrConfig::validate() const {
  PeftConfig::validate();
  detail::validate_lycoris(r_, rank_dropout_, module_dropout_, rank_pattern_);
  if (!init_weights_.is_bool() && init_weights_.method() != "lycoris") {
    throw ConfigError("init_weights must be true, false or \"lycoris\", got \"" + init_weights_.method() + "\"");
  }
}

}  // namespace peft
