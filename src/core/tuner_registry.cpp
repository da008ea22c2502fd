#include "core/tuner_registry.h"

namespace peft::detail {

namespace lora {
const Tuner& lora_tuner();
}  // namespace lora
namespace loha {
const Tuner& loha_tuner();
}  // namespace loha
namespace lokr {
const Tuner& lokr_tuner();
}  // namespace lokr

namespace {

// One line per adapter method.
const std::vector<const Tuner*>& tuners() {
  static const std::vector<const Tuner*> all{
      &lora::lora_tuner(),
      &loha::loha_tuner(),
      &lokr::lokr_tuner(),
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
