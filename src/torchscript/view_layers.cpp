#include "torchscript/view_layers.h"

#include <optional>
#include <regex>
#include <set>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>

#include <ATen/ops/matmul.h>
#include <peft/layers.h>

#include "core/tensor_slots.h"

namespace peft::detail::torchscript {
namespace {

using torch::jit::Node;
using torch::jit::Value;

// transformers' Conv1D (GPT-2's attention and MLP projections) in the view: y = x W + b with W stored (in, out).
class ScriptConv1DImpl : public torch::nn::Module, public peft::LinearLike {
 public:
  ScriptConv1DImpl(const at::Tensor& weight, const at::Tensor& bias) : torch::nn::Module("Conv1D") {
    register_parameter("weight", weight, weight.requires_grad());
    if (bias.defined()) register_parameter("bias", bias, bias.requires_grad());
  }
  // Read from the parameter slots each time: a merge may put new tensors there.
  at::Tensor linear_weight() const override { return *parameters_.find("weight"); }
  at::Tensor linear_bias() const override {
    const at::Tensor* bias = parameters_.find("bias");
    return bias ? *bias : at::Tensor();
  }
  bool weight_is_transposed() const override { return true; }
  at::Tensor forward(const at::Tensor& x) {
    return peft::forward_through_adapters(*this, x, [this](const at::Tensor& in) {
      const at::Tensor bias = linear_bias();
      const at::Tensor y = at::matmul(in, linear_weight());
      return bias.defined() ? y + bias : y;
    });
  }
  void pretty_print(std::ostream& stream) const override {
    const at::Tensor w = linear_weight();
    stream << "Conv1D(nf=" << w.size(1) << ", nx=" << w.size(0) << ")";
  }
};

bool is_forward_method(const std::string& name) {
  static const std::regex forward("forward[0-9]*");
  return std::regex_match(name, forward);
}

// The method's graph with its calls inlined and constants folded: what it computes, in aten operators.
std::shared_ptr<torch::jit::Graph> flattened_graph(const torch::jit::Module& module, const std::string& method) {
  auto graph = torch::jit::toGraphFunction(module.get_method(method).function()).graph()->copy();
  torch::jit::Inline(*graph);
  torch::jit::ConstantPropagation(graph);
  torch::jit::EliminateDeadCode(graph);
  return graph;
}

std::vector<Node*> compute_nodes(torch::jit::Graph& graph) {
  static const std::set<std::string> bookkeeping = {"prim::Constant", "prim::GetAttr", "prim::ListConstruct",
                                                    "prim::TupleConstruct"};
  std::vector<Node*> nodes;
  for (Node* node : graph.nodes()) {
    if (!bookkeeping.count(node->kind().toQualString())) nodes.push_back(node);
  }
  return nodes;
}

std::string kinds_of(const std::vector<Node*>& nodes) {
  std::string text;
  for (Node* node : nodes) text += std::string(text.empty() ? "" : ", ") + node->kind().toQualString();
  return text.empty() ? "nothing" : text;
}

bool is_attribute(Value* value, const std::string& name) {
  return value->node()->kind() == c10::prim::GetAttr && value->node()->s(c10::attr::name) == name;
}

std::optional<std::vector<int64_t>> constant_ints(Value* value) {
  if (auto constant = torch::jit::toIValue(value)) {
    if (constant->isIntList()) return constant->toIntVector();
    if (constant->isInt()) return std::vector<int64_t>{constant->toInt()};
    if (constant->isTuple()) {
      std::vector<int64_t> ints;
      for (const auto& element : constant->toTupleRef().elements()) {
        if (!element.isInt()) return std::nullopt;
        ints.push_back(element.toInt());
      }
      return ints;
    }
    return std::nullopt;
  }
  if (value->node()->kind() != c10::prim::ListConstruct) return std::nullopt;
  std::vector<int64_t> ints;
  for (Value* element : value->node()->inputs()) {
    auto constant = torch::jit::toIValue(element);
    if (!constant || !constant->isInt()) return std::nullopt;
    ints.push_back(constant->toInt());
  }
  return ints;
}

std::optional<bool> constant_bool(Value* value) {
  auto constant = torch::jit::toIValue(value);
  if (!constant || !constant->isBool()) return std::nullopt;
  return constant->toBool();
}

at::Tensor tensor_attribute(const torch::jit::Module& module, const std::string& name) {
  if (!module.hasattr(name)) return {};
  const c10::IValue value = module.attr(name);
  return value.isTensor() ? value.toTensor() : at::Tensor();
}

struct Analysis {
  std::shared_ptr<torch::nn::Module> layer;  // null: not a layer
  std::string why_not;
};

Analysis refuse(std::string why) { return {nullptr, std::move(why)}; }

Analysis linear_layer(const torch::jit::Module& module, Node* node, Value* input) {
  const at::Tensor weight = tensor_attribute(module, "weight");
  const at::Tensor bias = tensor_attribute(module, "bias");
  if (node->inputs().size() != 3 || node->input(0) != input || !is_attribute(node->input(1), "weight") ||
      !weight.defined() || weight.dim() != 2) {
    return refuse("its aten::linear is not linear(input, self.weight, ...)");
  }
  auto layer = std::make_shared<peft::LinearImpl>(torch::nn::LinearOptions(1, 0).bias(bias.defined()));
  layer->options = torch::nn::LinearOptions(weight.size(1), weight.size(0)).bias(bias.defined());
  replace_tensor(*layer, "weight", weight);
  if (bias.defined()) replace_tensor(*layer, "bias", bias);
  return {layer, ""};
}

Analysis embedding_layer(const torch::jit::Module& module, Node* node, Value* input) {
  const at::Tensor weight = tensor_attribute(module, "weight");
  if (node->inputs().size() != 5 || node->input(1) != input || !is_attribute(node->input(0), "weight") ||
      !weight.defined() || weight.dim() != 2) {
    return refuse("its aten::embedding is not embedding(self.weight, input, ...)");
  }
  const auto padding_idx = constant_ints(node->input(2));
  const auto scale_grad = constant_bool(node->input(3));
  const auto sparse = constant_bool(node->input(4));
  if (!padding_idx || padding_idx->size() != 1 || !scale_grad || !sparse) {
    return refuse("its aten::embedding takes arguments that are not constants");
  }
  auto layer = std::make_shared<peft::EmbeddingImpl>(torch::nn::EmbeddingOptions(0, weight.size(1)));
  torch::nn::EmbeddingOptions options(weight.size(0), weight.size(1));
  if (padding_idx->front() >= 0) options.padding_idx(padding_idx->front());
  options.scale_grad_by_freq(*scale_grad).sparse(*sparse);
  layer->options = options;
  replace_tensor(*layer, "weight", weight);
  return {layer, ""};
}

template <class Layer, size_t D>
std::shared_ptr<torch::nn::Module> conv_layer(const at::Tensor& weight, const at::Tensor& bias, int64_t groups,
                                              const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                                              const std::vector<int64_t>& dilation) {
  const std::vector<int64_t> kernel(weight.sizes().begin() + 2, weight.sizes().end());
  const int64_t in_channels = weight.size(1) * groups;
  // A 1x..x1 kernel and one output channel per group: LibTorch's constructor then initialises next to nothing (it
  // cannot take zero channels); the real sizes and tensors come right after.
  torch::nn::ConvOptions<D> options(in_channels, groups, torch::ExpandingArray<D>(1));
  options.stride(torch::ExpandingArray<D>(stride))
      .padding(torch::ExpandingArray<D>(padding))
      .dilation(torch::ExpandingArray<D>(dilation))
      .groups(groups)
      .bias(bias.defined());
  auto layer = std::make_shared<Layer>(options);
  layer->options.out_channels(weight.size(0)).kernel_size(torch::ExpandingArray<D>(kernel));
  replace_tensor(*layer, "weight", weight);
  if (bias.defined()) replace_tensor(*layer, "bias", bias);
  return layer;
}

Analysis convolution_layer(const torch::jit::Module& module, Node* node, Value* input) {
  const at::Tensor weight = tensor_attribute(module, "weight");
  const at::Tensor bias = tensor_attribute(module, "bias");
  const bool general = node->kind().toQualString() == std::string("aten::_convolution");
  if (node->inputs().size() != (general ? 13u : 7u) || node->input(0) != input ||
      !is_attribute(node->input(1), "weight") || !weight.defined() || weight.dim() < 3 || weight.dim() > 5) {
    return refuse(std::string("its ") + node->kind().toQualString() + " is not a convolution of input with self.weight");
  }
  const size_t dims = weight.dim() - 2;
  const auto stride = constant_ints(node->input(3));
  const auto padding = constant_ints(node->input(4));
  const auto dilation = constant_ints(node->input(5));
  const auto groups = constant_ints(node->input(general ? 8 : 6));
  if (!stride || !padding || !dilation || !groups || groups->size() != 1 || stride->size() != dims ||
      padding->size() != dims || dilation->size() != dims) {
    return refuse("its convolution's stride, padding, dilation or groups are not constant integers (padding='same'?)");
  }
  if (general) {
    const auto transposed = constant_bool(node->input(6));
    if (!transposed || *transposed) return refuse("it is a transposed convolution");
  }
  std::shared_ptr<torch::nn::Module> layer;
  if (dims == 1) layer = conv_layer<peft::Conv1dImpl, 1>(weight, bias, groups->front(), *stride, *padding, *dilation);
  if (dims == 2) layer = conv_layer<peft::Conv2dImpl, 2>(weight, bias, groups->front(), *stride, *padding, *dilation);
  if (dims == 3) layer = conv_layer<peft::Conv3dImpl, 3>(weight, bias, groups->front(), *stride, *padding, *dilation);
  return {layer, ""};
}

Analysis transformers_conv1d_layer(const torch::jit::Module& module, const std::vector<Node*>& nodes) {
  const at::Tensor weight = tensor_attribute(module, "weight");
  const at::Tensor bias = tensor_attribute(module, "bias");
  if (!weight.defined() || weight.dim() != 2 || (bias.defined() && (bias.dim() != 1 || bias.size(0) != weight.size(1)))) {
    return refuse("a Conv1D needs a 2-D weight (in, out) and a bias of out elements");
  }
  bool multiplies = false;
  for (Node* node : nodes) {
    const std::string kind = node->kind().toQualString();
    if (kind != "aten::matmul" && kind != "aten::addmm" && kind != "aten::mm") continue;
    for (Value* operand : node->inputs()) multiplies = multiplies || is_attribute(operand, "weight");
  }
  if (!multiplies) return refuse("its forward does not multiply by self.weight");
  return {std::make_shared<ScriptConv1DImpl>(weight, bias), ""};
}

Analysis analyse(const torch::jit::Module& module, const std::string& method) {
  const auto& schema = module.get_method(method).function().getSchema();
  if (schema.arguments().size() != 2 || schema.returns().size() != 1 ||
      !schema.arguments()[1].type()->isSubtypeOf(*c10::TensorType::get()) ||
      !schema.returns()[0].type()->isSubtypeOf(*c10::TensorType::get())) {
    return refuse("its " + method + " is not (Tensor) -> Tensor");
  }
  const auto graph = flattened_graph(module, method);
  const std::vector<Node*> nodes = compute_nodes(*graph);
  Value* input = graph->inputs()[1];
  if (module.type()->name()->name() == "Conv1D") return transformers_conv1d_layer(module, nodes);
  if (nodes.size() != 1) return refuse("its " + method + " computes " + kinds_of(nodes));
  Node* node = nodes.front();
  const std::string kind = node->kind().toQualString();
  if (node->outputs().size() != 1 || graph->outputs().size() != 1 || graph->outputs()[0] != node->output()) {
    return refuse("its " + method + " does not return what " + kind + " computes");
  }
  if (kind == "aten::linear") return linear_layer(module, node, input);
  if (kind == "aten::embedding") return embedding_layer(module, node, input);
  if (kind == "aten::_convolution" || kind == "aten::conv1d" || kind == "aten::conv2d" || kind == "aten::conv3d") {
    return convolution_layer(module, node, input);
  }
  return refuse("its " + method + " computes " + kind);
}

// A container in the view holds the submodule's own parameters and buffers (the same tensors), so that freezing
// everything but the adapters (injection, training) reaches them too.
// Prints as "Name(TorchScript submodule: <why it is not a layer>)", which is what an error about targeting it shows.
class ViewContainer : public torch::nn::Module {
 public:
  ViewContainer(const std::string& type_name, std::string why_not)
      : torch::nn::Module(type_name), why_not_(std::move(why_not)) {}
  void pretty_print(std::ostream& stream) const override {
    stream << name() << "(TorchScript submodule: " << why_not_ << ")";
  }

 private:
  std::string why_not_;
};

std::shared_ptr<torch::nn::Module> container(const torch::jit::Module& submodule, const std::string& why_not) {
  const std::string type_name = submodule.type()->name() ? submodule.type()->name()->name() : "Module";
  auto module = std::make_shared<ViewContainer>(type_name, why_not);
  for (const auto& item : submodule.named_parameters(/*recurse=*/false)) {
    module->register_parameter(item.name, item.value, item.value.requires_grad());
  }
  for (const auto& item : submodule.named_buffers(/*recurse=*/false)) module->register_buffer(item.name, item.value);
  return module;
}

}  // namespace

ViewLayer make_view_layer(const torch::jit::Module& submodule) {
  ViewLayer view;
  for (const auto& method : submodule.type()->methods()) {
    if (is_forward_method(method->name())) view.forward_methods.push_back(method->name());
  }
  if (view.forward_methods.empty() || submodule.named_children().size() > 0) {
    view.why_not = view.forward_methods.empty() ? "it has no forward" : "it has submodules";
    view.module = container(submodule, view.why_not);
    return view;
  }
  Analysis first;
  for (const auto& method : view.forward_methods) {
    Analysis analysis;
    try {
      analysis = analyse(submodule, method);
    } catch (const c10::Error& e) {
      analysis = refuse(std::string("its ") + method + " could not be read (" + e.what_without_backtrace() + ")");
    } catch (const std::exception& e) {
      analysis = refuse(std::string("its ") + method + " could not be read (" + e.what() + ")");
    }
    if (!analysis.layer) {
      view.why_not = analysis.why_not;
      view.module = container(submodule, view.why_not);
      return view;
    }
    if (!first.layer) first = analysis;
  }
  view.module = first.layer;
  view.is_layer = true;
  return view;
}

std::shared_ptr<torch::nn::Module> make_view_container(const torch::jit::Module& submodule, const std::string& why_not) {
  return container(submodule, why_not);
}

at::Tensor run_view_layer(torch::nn::Module& layer, const at::Tensor& input) {
#define PEFT_RUN(Name) \
  if (auto* typed = dynamic_cast<peft::Name##Impl*>(&layer)) return typed->forward(input);
  PEFT_ROUTED_LAYERS(PEFT_RUN)
#undef PEFT_RUN
  if (auto* conv1d = dynamic_cast<ScriptConv1DImpl*>(&layer)) return conv1d->forward(input);
  TORCH_INTERNAL_ASSERT(false, "run_view_layer: ", layer.name(), " is not a view layer");
}

std::vector<std::pair<std::string, at::Tensor>> view_layer_tensors(const torch::nn::Module& layer) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : layer.named_parameters(/*recurse=*/false)) {
    if (item.key() == "weight" || item.key() == "bias") tensors.emplace_back(item.key(), item.value());
  }
  return tensors;
}

}  // namespace peft::detail::torchscript
