#include "torchscript/attachment.h"

#include <set>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/library.h>

#include <peft/error.h>

#include "core/adapter_layer.h"

namespace peft::detail::torchscript {
namespace {

constexpr const char* kSlot = "_peft_slot";
constexpr const char* kAttachment = "_peft_adapters";

std::string cannot_save(const std::string& what) {
  return "peft-cpp: " + what + " carries peft-cpp adapters, which a TorchScript file cannot hold (nor a copy made "
         "with clone/deepcopy). Save the adapters with peft::save_adapter(model, directory); to save the model with "
         "them merged into its weights call peft::merge_and_unload(model) first, or peft::unload(model) to drop them.";
}

// The value of an adapted submodule's `_peft_slot`: its layer in the view.
struct LayerSlot : torch::CustomClassHolder {
  LayerSlot(std::shared_ptr<torch::nn::Module> layer, std::string name) : layer(std::move(layer)), name(std::move(name)) {}
  at::Tensor forward(const at::Tensor& input, bool training) {
    if (layer->is_training() != training) layer->train(training);
    return run_view_layer(*layer, input);
  }
  std::shared_ptr<torch::nn::Module> layer;
  std::string name;
};

TORCH_LIBRARY(peft, library) {
  library.class_<LayerSlot>("LayerSlot")
      .def("forward", &LayerSlot::forward)
      .def_pickle(
          [](const c10::intrusive_ptr<LayerSlot>& slot) -> std::string {
            throw peft::Error(cannot_save("the TorchScript submodule '" + slot->name + "'"));
          },
          [](std::string) -> c10::intrusive_ptr<LayerSlot> {
            throw peft::Error("peft-cpp: this TorchScript file holds a peft-cpp adapter call, which cannot be loaded");
          });
  library.class_<Attachment>("Attachment")
      .def_pickle(
          [](const c10::intrusive_ptr<Attachment>&) -> std::string { throw peft::Error(cannot_save("this model")); },
          [](std::string) -> c10::intrusive_ptr<Attachment> {
            throw peft::Error("peft-cpp: this TorchScript file holds peft-cpp adapters, which cannot be loaded");
          });
}

// forward(self, input) = self._peft_slot.forward(input, self.training)
std::shared_ptr<torch::jit::Graph> routed_graph(const c10::ClassTypePtr& type) {
  auto graph = std::make_shared<torch::jit::Graph>();
  torch::jit::Value* self = graph->addInput("self")->setType(type);
  torch::jit::Value* input = graph->addInput("input")->setType(c10::TensorType::get());
  torch::jit::Value* slot = graph->insertNode(graph->createGetAttr(self, kSlot))->output();
  torch::jit::Value* training = type->hasAttribute("training")
                                    ? graph->insertNode(graph->createGetAttr(self, "training"))->output()
                                    : graph->insertConstant(false);
  torch::jit::Node* call = graph->insertNode(graph->create(c10::prim::CallMethod, {slot, input, training}));
  call->s_(c10::attr::name, "forward");
  call->output()->setType(c10::TensorType::get());
  graph->registerOutput(call->output());
  return graph;
}

void replace_method(c10::ClassType& type, torch::jit::Function* function) {
  type.unsafeRemoveMethod(function->name());
  type.addMethod(function);
}

}  // namespace

c10::intrusive_ptr<Attachment> Attachment::find(const torch::jit::Module& model) {
  if (!model.hasattr(kAttachment)) return {};
  return model.attr(kAttachment).toCustomClass<Attachment>();
}

c10::intrusive_ptr<Attachment> Attachment::build(const torch::jit::Module& model) {
  auto attachment = c10::make_intrusive<Attachment>();
  std::vector<std::pair<std::string, torch::jit::Module>> modules;
  for (const auto& item : model.named_modules()) modules.emplace_back(item.name, item.value);

  std::vector<ViewLayer> views;
  std::map<const c10::ClassType*, bool> type_is_layer;
  for (const auto& [name, module] : modules) {
    views.push_back(make_view_layer(module));
    auto [it, fresh] = type_is_layer.emplace(module.type().get(), views.back().is_layer);
    if (!fresh) it->second = it->second && views.back().is_layer;
  }
  // One class type has one forward: its instances are all layers or all containers.
  for (size_t i = 0; i < modules.size(); ++i) {
    if (views[i].is_layer && !type_is_layer.at(modules[i].second.type().get())) {
      const std::string why_not = "another submodule of its TorchScript type is not a layer";
      views[i] = ViewLayer{make_view_container(modules[i].second, why_not), false, why_not, views[i].forward_methods};
    }
  }
  std::map<std::string, std::shared_ptr<torch::nn::Module>> by_name;
  for (size_t i = 0; i < modules.size(); ++i) {
    const std::string& name = modules[i].first;
    by_name[name] = views[i].module;
    if (!name.empty()) {
      const size_t dot = name.rfind('.');
      const std::string parent = dot == std::string::npos ? "" : name.substr(0, dot);
      by_name.at(parent)->register_module(dot == std::string::npos ? name : name.substr(dot + 1), views[i].module);
    }
    attachment->submodules_.push_back(Submodule{name, views[i]});
  }
  attachment->view_ = by_name.at("");

  std::set<const c10::ClassType*> seen;
  for (const auto& [name, module] : modules) {
    if (seen.insert(module.type().get()).second) {
      attachment->original_methods_.emplace_back(module.type(), module.type()->methods());
    }
  }
  return attachment;
}

void Attachment::sync(torch::jit::Module& model) {
  std::map<std::string, torch::jit::Module> modules;
  for (const auto& item : model.named_modules()) modules.emplace(item.name, item.value);

  // A tensor the view replaced (rather than changed in place) goes back to its submodule.
  for (const Submodule& sub : submodules_) {
    if (!sub.view.is_layer) continue;
    torch::jit::Module& module = modules.at(sub.name);
    for (const auto& [name, tensor] : view_layer_tensors(*sub.view.module)) {
      const c10::IValue current = module.attr(name);
      if (!current.isTensor() || !current.toTensor().is_same(tensor)) module.setattr(name, tensor);
    }
  }

  std::map<const c10::ClassType*, std::vector<const Submodule*>> instances;
  std::map<const c10::ClassType*, c10::ClassTypePtr> types;
  std::set<const c10::ClassType*> adapted;
  for (const Submodule& sub : submodules_) {
    if (!sub.view.is_layer) continue;
    const c10::ClassTypePtr type = modules.at(sub.name).type();
    instances[type.get()].push_back(&sub);
    types[type.get()] = type;
    if (adapter_layer_of(*sub.view.module)) adapted.insert(type.get());
  }
  bool changed = false;
  for (const c10::ClassType* type : adapted) {
    if (routed_.count(type)) continue;
    route(*types.at(type), instances.at(type), modules);
    changed = true;
  }
  for (const auto& [type, methods] : std::map<const c10::ClassType*, std::vector<std::string>>(routed_)) {
    if (adapted.count(type)) continue;
    restore(*types.at(type), modules);
    changed = true;
  }

  const bool attached = model.hasattr(kAttachment);
  if (routed_.empty()) {
    if (changed) restore_all_methods();
    if (attached) {
      model._ivalue()->unsafeRemoveAttr(kAttachment);
      model.type()->unsafeRemoveAttribute(kAttachment);
    }
    return;
  }
  if (changed) refresh_callers(*model._ivalue()->compilation_unit());
  if (!attached) {
    model.register_attribute(kAttachment, c10::getCustomClassType<c10::intrusive_ptr<Attachment>>(),
                             c10::IValue(c10::intrusive_ptr<Attachment>::reclaim_copy(this)));
  }
}

void Attachment::route(c10::ClassType& type, const std::vector<const Submodule*>& subs,
                       std::map<std::string, torch::jit::Module>& modules) {
  const c10::ClassTypePtr type_ptr = modules.at(subs.front()->name).type();
  if (!type.hasAttribute(kSlot)) type.addAttribute(kSlot, c10::getCustomClassType<c10::intrusive_ptr<LayerSlot>>());
  for (const Submodule* sub : subs) {
    modules.at(sub->name)._ivalue()->setAttr(kSlot, c10::IValue(c10::make_intrusive<LayerSlot>(sub->view.module, sub->name)));
  }
  auto unit = modules.at(subs.front()->name)._ivalue()->compilation_unit();
  for (const std::string& method : subs.front()->view.forward_methods) {
    torch::jit::Function* routed =
        unit->create_function(c10::QualifiedName(*type.name(), method), routed_graph(type_ptr), /*shouldMangle=*/true);
    replace_method(type, routed);
  }
  routed_[&type] = subs.front()->view.forward_methods;
}

void Attachment::restore(c10::ClassType& type, std::map<std::string, torch::jit::Module>& modules) {
  for (const auto& [original_type, methods] : original_methods_) {
    if (original_type.get() != &type) continue;
    for (torch::jit::Function* method : methods) {
      for (const std::string& name : routed_.at(&type)) {
        if (method->name() == name) replace_method(type, method);
      }
    }
  }
  for (auto& [name, module] : modules) {
    if (module.type().get() == &type) module._ivalue()->unsafeRemoveAttr(kSlot);
  }
  type.unsafeRemoveAttribute(kSlot);
  routed_.erase(&type);
}

void Attachment::refresh_callers(torch::jit::CompilationUnit& unit) {
  for (const auto& [type, methods] : original_methods_) {
    if (routed_.count(type.get())) continue;
    for (torch::jit::Function* method : methods) {
      const auto& original = torch::jit::toGraphFunction(*method);
      torch::jit::Function* fresh =
          unit.create_function(c10::QualifiedName(*type->name(), method->name()), original.graph()->copy(), true);
      torch::jit::toGraphFunction(*fresh).setSchema(original.getSchema());
      replace_method(*type, fresh);
    }
  }
}

void Attachment::restore_all_methods() {
  for (const auto& [type, methods] : original_methods_) {
    for (torch::jit::Function* current : std::vector<torch::jit::Function*>(type->methods())) {
      type->unsafeRemoveMethod(current->name());
    }
    for (torch::jit::Function* method : methods) type->addMethod(method);
  }
}

}  // namespace peft::detail::torchscript
