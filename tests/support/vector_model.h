#pragma once

// Rebuilds a vector case's model (model.json) in C++ as ordinary user code would write it: layers held in
// torch::nn holders, registered under the same names, and called through those holders.

#include <functional>
#include <map>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <peft/peft.h>

namespace peft_test {

enum class LayerStyle {
  Torch,  // torch::nn::Linear & co. (reached through call routing)
  Peft,   // peft::Linear & co. (adapter-aware drop-ins)
};

/// The style every build can run: LibTorch's layers where calls are routed, the drop-ins otherwise.
constexpr LayerStyle kDefaultStyle = PEFT_TEST_ROUTED_LAYERS ? LayerStyle::Torch : LayerStyle::Peft;

/// transformers' Conv1D (GPT-2): weight (in, out), y = x @ W + b; adaptable through peft::LinearLike.
struct GPT2Conv1DImpl : torch::nn::Module, peft::LinearLike {
  torch::Tensor weight, bias;
  GPT2Conv1DImpl(int64_t nf, int64_t nx);
  at::Tensor linear_weight() const override { return weight; }
  at::Tensor linear_bias() const override { return bias; }
  bool weight_is_transposed() const override { return true; }
  torch::Tensor forward(const torch::Tensor& x);
};
TORCH_MODULE(GPT2Conv1D);

class VectorModelImpl : public torch::nn::Module {
 public:
  explicit VectorModelImpl(const nlohmann::json& model_json, LayerStyle style = kDefaultStyle);
  torch::Tensor forward(const torch::Tensor& x);
  /// Copies base.safetensors into the parameters (every parameter must be present).
  void load_base(const peft::StateDict& weights);

 private:
  torch::nn::Module& container(const std::string& path);
  void add_layer(const std::string& path, const nlohmann::json& spec, LayerStyle style);

  nlohmann::json model_;
  std::map<std::string, std::shared_ptr<torch::nn::Module>> containers_;
  std::map<std::string, std::function<torch::Tensor(const torch::Tensor&)>> calls_;
};
TORCH_MODULE(VectorModel);

}  // namespace peft_test

namespace peft_test {

struct VectorCase;

/// The case's base model with its base weights, in eval mode.
VectorModel base_model(const VectorCase& c, LayerStyle style = kDefaultStyle);
/// Injects the case's adapters ("default", then "other" if present) from their adapter_config.json and
/// loads their adapter_model.safetensors; "other" ends up active when present.
void inject_case_adapters(VectorModel& model, const VectorCase& c, bool low_cpu_mem_usage = false);

}  // namespace peft_test
