#include "core/module_walk.h"

#include <algorithm>
#include <unordered_set>

#include "core/module_access.h"
#include "core/adapter_layer.h"

namespace peft::detail {
namespace {

void walk(torch::nn::Module& module, torch::nn::Module* parent, const std::string& name,
          std::unordered_set<const torch::nn::Module*>& seen, const std::function<void(const ModuleVisit&)>& visit) {
  if (!seen.insert(&module).second) return;
  visit(ModuleVisit{name, module, parent});
  const ChildMap& children = children_of(module);
  if (children.is_empty()) return;
  std::vector<std::string> skip;
  if (AdapterLayer* adapters = adapter_layer_among(children)) skip = adapters->container_names();
  for (const auto& child : children) {
    if (std::find(skip.begin(), skip.end(), child.key()) != skip.end()) continue;
    walk(*child.value(), &module, name.empty() ? child.key() : name + "." + child.key(), seen, visit);
  }
}

}  // namespace

void walk_modules(torch::nn::Module& root, const std::function<void(const ModuleVisit&)>& visit) {
  std::unordered_set<const torch::nn::Module*> seen;
  walk(root, nullptr, "", seen, visit);
}

void walk_modules(const torch::nn::Module& root,
                  const std::function<void(const std::string&, const torch::nn::Module&)>& visit) {
  // The walk only reads; the non-const overload shares the traversal.
  walk_modules(const_cast<torch::nn::Module&>(root),
               [&](const ModuleVisit& v) { visit(v.name, v.module); });
}

}  // namespace peft::detail
