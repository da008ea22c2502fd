#include <peft/tuners/fourierft/config.h>

#include "tuners/common/config_checks.h"

namespace peft {

void FourierFTConfig::validate() const {
  PeftConfig::validate();
  detail::check_positive("n_frequency", n_frequency_);
  detail::check_positive_pattern("n_frequency_pattern", n_frequency_pattern_);
  detail::check_bias(bias_, "fourier_only");
}

}  // namespace peft
