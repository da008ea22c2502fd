#include "core/tuner_registry.h"

namespace peft::detail {

// Each method's tuner, defined in src/tuners/<method>/.
namespace lora { const Tuner& lora_tuner(); }
namespace loha { const Tuner& loha_tuner(); }
namespace lokr { const Tuner& lokr_tuner(); }
namespace ia3 { const Tuner& ia3_tuner(); }
namespace adalora { const Tuner& adalora_tuner(); }
namespace oft { const Tuner& oft_tuner(); }
namespace boft { const Tuner& boft_tuner(); }
namespace hra { const Tuner& hra_tuner(); }
namespace fourierft { const Tuner& fourierft_tuner(); }
namespace c3a { const Tuner& c3a_tuner(); }
namespace miss { const Tuner& miss_tuner(); }
namespace ln_tuning { const Tuner& ln_tuning_tuner(); }

namespace {

// One line per adapter method.
const std::vector<const Tuner*>& tuners() {
  static const std::vector<const Tuner*> all{
      &lora::lora_tuner(),
      &loha::loha_tuner(),
      &lokr::lokr_tuner(),
      &ia3::ia3_tuner(),
      &adalora::adalora_tuner(),
      &oft::oft_tuner(),
      &boft::boft_tuner(),
      &hra::hra_tuner(),
      &fourierft::fourierft_tuner(),
      &c3a::c3a_tuner(),
      &miss::miss_tuner(),
      &ln_tuning::ln_tuning_tuner(),
  };
  return all;
}

}  // namespace

std::string Tuner::unsupported_layer_message(const torch::nn::Module& module) const {
  return "Target module " + short_repr(module) + " is not supported by " + peft_type() + ".";
}

void Tuner::check_new_adapter(const PeftConfig&, const std::vector<std::shared_ptr<const PeftConfig>>&) const {}

const Tuner* find_tuner_for(const std::string& peft_type) {
  for (const Tuner* tuner : tuners()) {
    if (peft_type == tuner->peft_type()) return tuner;
  }
  return nullptr;
}

std::vector<std::string> registered_peft_types() {
  std::vector<std::string> names;
  for (const Tuner* tuner : tuners()) names.emplace_back(tuner->peft_type());
  return names;
}

}  // namespace peft::detail
