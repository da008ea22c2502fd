#include <peft/tuners/oft/config.h>

#include <peft/error.h>

#include "tuners/common/config_checks.h"

namespace peft {

void OFTConfig::validate() const {
  PeftConfig::validate();
  if (r_ < 0 || oft_block_size_ < 0) throw ConfigError("`r` and `oft_block_size` must not be negative.");
  if (r_ == 0 && oft_block_size_ == 0) {
    throw ConfigError("Either `r` or `oft_block_size` must be non-zero. Currently, r = 0 and oft_block_size = 0.");
  }
  if (r_ != 0 && oft_block_size_ != 0) {
    throw ConfigError("You can only specify either r (" + std::to_string(r_) + ") or oft_block_size (" +
                      std::to_string(oft_block_size_) +
                      "), but not both simultaneously, because r x oft_block_size == in_features.");
  }
  if (use_cayley_neumann_) detail::check_positive("num_cayley_neumann_terms", num_cayley_neumann_terms_);
  detail::check_probability("module_dropout", module_dropout_);
  detail::check_bias(bias_, "oft_only");
}

}  // namespace peft
