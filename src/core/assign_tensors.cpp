// peft::assign_tensors: a model's tensors replaced by given ones, without copying (<peft/layers.h>).

#include <sstream>
#include <unordered_map>

#include <peft/error.h>
#include <peft/layers.h>

#include "core/adapter_layer.h"
#include "core/module_access.h"
#include "core/tensor_slots.h"

namespace peft {

void assign_tensors(torch::nn::Module& module, const torch::OrderedDict<std::string, at::Tensor>& tensors) {
  std::unordered_map<std::string, torch::nn::Module*> modules;
  for (const auto& item : module.named_modules("", /*include_self=*/true)) modules.emplace(item.key(), item.value().get());

  struct Planned {
    torch::nn::Module* owner;
    std::string name;
    bool is_buffer;
    const at::Tensor* value;
  };
  std::vector<Planned> plan;
  std::string problems;
  for (const auto& item : tensors) {
    const std::string& key = item.key();
    const auto dot = key.rfind('.');
    const std::string owner_name = dot == std::string::npos ? "" : key.substr(0, dot);
    const std::string name = dot == std::string::npos ? key : key.substr(dot + 1);
    auto owner = modules.find(owner_name);
    const at::Tensor* current = nullptr;
    bool is_buffer = false;
    if (owner != modules.end()) {
      current = detail::parameters_of(*owner->second).find(name);
      if (!current) {
        current = detail::buffers_of(*owner->second).find(name);
        is_buffer = current != nullptr;
      }
    }
    std::ostringstream problem;
    if (!current || !current->defined()) {
      problem << "\n\t" << key << ": the model has no such parameter or buffer";
    } else if (!item.value().defined()) {
      problem << "\n\t" << key << ": the given tensor is undefined";
    } else if (current->sizes() != item.value().sizes()) {
      problem << "\n\t" << key << ": shape " << item.value().sizes() << " given, the model's is " << current->sizes();
    } else {
      plan.push_back({owner->second, name, is_buffer, &item.value()});
    }
    problems += problem.str();
  }
  if (!problems.empty()) throw StateDictError("assign_tensors: nothing was assigned because of" + problems);
  for (const Planned& p : plan) {
    const at::Tensor old = p.is_buffer ? *detail::buffers_of(*p.owner).find(p.name) : *detail::parameters_of(*p.owner).find(p.name);
    detail::replace_tensor(*p.owner, p.name, *p.value, p.is_buffer);
    if (p.name == "weight") detail::weight_replaced(*p.owner, old);
  }
}

}  // namespace peft
