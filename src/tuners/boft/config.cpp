#include <peft/tuners/boft/config.h>

#include <peft/error.h>

#include "tuners/common/config_checks.h"

namespace peft {

void BOFTConfig::validate() const {
  PeftConfig::validate();
  if (boft_block_size_ < 0 || boft_block_num_ < 0) {
    throw ConfigError("`boft_block_size` and `boft_block_num` must not be negative.");
  }
  if (boft_block_size_ == 0 && boft_block_num_ == 0) {
    throw ConfigError("Either `boft_block_size` or `boft_block_num` must be non-zero. Currently, boft_block_size = 0 "
                      "and boft_block_num = 0.");
  }
  if (boft_block_size_ != 0 && boft_block_num_ != 0) {
    throw ConfigError("You can only specify either boft_block_size (" + std::to_string(boft_block_size_) +
                      ") or boft_block_num (" + std::to_string(boft_block_num_) +
                      "), but not both simultaneously, because boft_block_size x boft_block_num == in_features.");
  }
  detail::check_positive("boft_n_butterfly_factor", boft_n_butterfly_factor_);
  detail::check_probability("boft_dropout", boft_dropout_);
  detail::check_bias(bias_, "boft_only");
}

}  // namespace peft
