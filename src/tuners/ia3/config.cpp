#include <peft/tuners/ia3/config.h>

#include <algorithm>

#include <peft/error.h>

#include "tuners/common/config_checks.h"

namespace peft {

void IA3Config::validate() const {
  PeftConfig::validate();
  detail::check_no_layer_selection(*this, "IA3Config");
  if (feedforward_modules_.is_names() && target_modules_.is_names()) {
    const auto& targets = target_modules_.names();
    for (const auto& name : feedforward_modules_.names()) {
      if (std::find(targets.begin(), targets.end(), name) == targets.end()) {
        throw ConfigError("`feedforward_modules` should be a subset of `target_modules`");
      }
    }
  }
}

}  // namespace peft
