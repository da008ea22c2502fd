#include "support/vector_model.h"

namespace peft_test {
namespace {

// A named plain container (the Python model's nested nn.Module classes).
struct ContainerImpl : torch::nn::Module {
  explicit ContainerImpl(const std::string& name) : torch::nn::Module(name) {}
};

std::pair<std::string, std::string> split_last(const std::string& path) {
  const auto dot = path.rfind('.');
  if (dot == std::string::npos) return {"", path};
  return {path.substr(0, dot), path.substr(dot + 1)};
}

// Registers `child` under `name` in `parent`; a ModuleList appends (its names are the indices).
void attach(torch::nn::Module& parent, const std::string& name, std::shared_ptr<torch::nn::Module> child) {
  if (auto* list = dynamic_cast<torch::nn::ModuleListImpl*>(&parent)) {
    if (std::to_string(list->size()) != name) throw std::runtime_error("ModuleList child out of order: " + name);
    list->push_back(child);
    return;
  }
  parent.register_module(name, std::move(child));
}

template <class Holder>
std::function<torch::Tensor(const torch::Tensor&)> caller(Holder holder) {
  // The call a user's forward makes: holder(x) -> XImpl::forward(x).
  return [holder](const torch::Tensor& x) mutable { return holder(x); };
}

}  // namespace

GPT2Conv1DImpl::GPT2Conv1DImpl(int64_t nf, int64_t nx) {
  weight = register_parameter("weight", torch::randn({nx, nf}) * 0.02);
  bias = register_parameter("bias", torch::zeros({nf}));
}

torch::Tensor GPT2Conv1DImpl::forward(const torch::Tensor& x) {
  return peft::forward_through_adapters(*this, x, [this](const torch::Tensor& in) {
    auto sizes = in.sizes().vec();
    sizes.back() = weight.size(1);
    return torch::addmm(bias, in.reshape({-1, in.size(-1)}), weight).view(sizes);
  });
}

VectorModelImpl::VectorModelImpl(const nlohmann::json& model_json, LayerStyle style)
    : torch::nn::Module(model_json.value("class_name", "VectorModel")), model_(model_json) {
  for (const auto& spec : model_["modules"]) add_layer(spec["name"], spec, style);
}

torch::nn::Module& VectorModelImpl::container(const std::string& path) {
  if (path.empty()) return *this;
  auto it = containers_.find(path);
  if (it != containers_.end()) return *it->second;
  const auto [parent_path, name] = split_last(path);
  torch::nn::Module& parent = container(parent_path);
  const auto& classes = model_.value("containers", nlohmann::json::object());
  const std::string cls = classes.contains(path) ? classes[path].get<std::string>() : "Container";
  std::shared_ptr<torch::nn::Module> made;
  if (cls == "ModuleList") {
    made = torch::nn::ModuleList().ptr();
  } else {
    made = std::make_shared<ContainerImpl>(cls);
  }
  attach(parent, name, made);
  containers_[path] = made;
  return *made;
}

void VectorModelImpl::add_layer(const std::string& path, const nlohmann::json& spec, LayerStyle style) {
  const std::string type = spec["type"];
  const auto& a = spec["args"];
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const torch::Tensor&)> call;
  const bool peft_style = style == LayerStyle::Peft;
  if (type == "Linear") {
    auto options = torch::nn::LinearOptions(a["in_features"], a["out_features"]).bias(a.value("bias", true));
    if (peft_style) {
      peft::Linear layer(options);
      module = layer.ptr(), call = caller(layer);
    } else {
      torch::nn::Linear layer(options);
      module = layer.ptr(), call = caller(layer);
    }
  } else if (type == "Embedding") {
    auto options = torch::nn::EmbeddingOptions(a["num_embeddings"], a["embedding_dim"]);
    if (peft_style) {
      peft::Embedding layer(options);
      module = layer.ptr(), call = caller(layer);
    } else {
      torch::nn::Embedding layer(options);
      module = layer.ptr(), call = caller(layer);
    }
  } else if (type == "Conv1d" || type == "Conv2d") {
    const int64_t in = a["in_channels"], out = a["out_channels"], k = a["kernel_size"];
    const int64_t stride = a.value("stride", 1), padding = a.value("padding", 0);
    const bool bias = a.value("bias", true);
    if (type == "Conv1d") {
      auto options = torch::nn::Conv1dOptions(in, out, k).stride(stride).padding(padding).bias(bias);
      if (peft_style) {
        peft::Conv1d layer(options);
        module = layer.ptr(), call = caller(layer);
      } else {
        torch::nn::Conv1d layer(options);
        module = layer.ptr(), call = caller(layer);
      }
    } else {
      auto options = torch::nn::Conv2dOptions(in, out, k).stride(stride).padding(padding).bias(bias);
      if (peft_style) {
        peft::Conv2d layer(options);
        module = layer.ptr(), call = caller(layer);
      } else {
        torch::nn::Conv2d layer(options);
        module = layer.ptr(), call = caller(layer);
      }
    }
  } else if (type == "LayerNorm") {
    auto options = torch::nn::LayerNormOptions(a["normalized_shape"].get<std::vector<int64_t>>())
                       .eps(a.value("eps", 1e-5))
                       .elementwise_affine(a.value("elementwise_affine", true));
    if (peft_style) {
      peft::LayerNorm layer(options);
      module = layer.ptr(), call = caller(layer);
    } else {
      torch::nn::LayerNorm layer(options);
      module = layer.ptr(), call = caller(layer);
    }
  } else if (type == "ReLU") {
    torch::nn::ReLU layer;
    module = layer.ptr(), call = caller(layer);
  } else if (type == "GPT2Conv1D") {
    GPT2Conv1D layer(a["nf"].get<int64_t>(), a["nx"].get<int64_t>());
    module = layer.ptr(), call = caller(layer);
  } else {
    throw std::runtime_error("vector model: unknown layer type " + type);
  }
  const auto [parent_path, name] = split_last(path);
  attach(container(parent_path), name, module);
  calls_[path] = std::move(call);
}

torch::Tensor VectorModelImpl::forward(const torch::Tensor& x) {
  std::map<std::string, torch::Tensor> env{{"x", x}};
  auto in = [&](const nlohmann::json& step, size_t i) { return env.at(step["in"][i].get<std::string>()); };
  for (const auto& step : model_["forward"]) {
    const std::string op = step["op"];
    torch::Tensor out;
    if (op == "call") {
      out = calls_.at(step["module"].get<std::string>())(in(step, 0));
    } else if (op == "relu") {
      out = torch::relu(in(step, 0));
    } else if (op == "silu") {
      out = torch::silu(in(step, 0));
    } else if (op == "add") {
      out = in(step, 0) + in(step, 1);
    } else if (op == "mul") {
      out = in(step, 0) * in(step, 1);
    } else if (op == "matmul") {
      out = torch::matmul(in(step, 0), in(step, 1));
    } else if (op == "transpose") {
      out = in(step, 0).transpose(step["dim0"].get<int64_t>(), step["dim1"].get<int64_t>());
    } else if (op == "scale") {
      out = in(step, 0) * step["value"].get<double>();
    } else if (op == "softmax") {
      out = torch::softmax(in(step, 0), step["dim"].get<int64_t>());
    } else if (op == "flatten") {
      out = torch::flatten(in(step, 0), step.value("start_dim", 0), step.value("end_dim", -1));
    } else {
      throw std::runtime_error("vector model: unknown op " + op);
    }
    env[step["out"].get<std::string>()] = out;
  }
  return env.at(model_["output"].get<std::string>());
}

void VectorModelImpl::load_base(const peft::StateDict& weights) {
  torch::NoGradGuard no_grad;
  size_t used = 0;
  for (auto& item : named_parameters()) {
    const at::Tensor* w = weights.find(item.key());
    if (!w) throw std::runtime_error("base.safetensors lacks " + item.key());
    item.value().copy_(*w);
    ++used;
  }
  if (used != weights.size()) throw std::runtime_error("base.safetensors has tensors the model does not");
}

}  // namespace peft_test

#include "support/vectors.h"

namespace peft_test {

VectorModel base_model(const VectorCase& c, LayerStyle style) {
  VectorModel model(c.model, style);
  model->load_base(c.tensors("base.safetensors"));
  model->eval();
  return model;
}

void inject_case_adapters(VectorModel& model, const VectorCase& c, bool low_cpu_mem_usage) {
  std::vector<std::pair<std::string, std::string>> adapters{{"default", ""}};
  if (c.has("other/adapter_config.json")) adapters.push_back({"other", "other/"});
  for (const auto& [name, sub] : adapters) {
    auto config = peft::load_config((c.dir / (sub + "adapter_config.json")).string());
    peft::inject_adapter_in_model(*config, model, name, low_cpu_mem_usage);
    peft::set_peft_model_state_dict(*model, c.tensors(sub + "adapter_model.safetensors"), name, low_cpu_mem_usage);
  }
}

}  // namespace peft_test
