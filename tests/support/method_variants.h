#pragma once

// The fixtures of tests/test_method_variants.cpp, shared so that each method's own test file
// (tests/methods/<method>.cpp) instantiates them with its variants:
//
//   INSTANTIATE_TEST_SUITE_P(Vera, MethodVariants, testing::Values(Variant{"vera", false, {...config json...}}),
//                            VariantName());
//   INSTANTIATE_TEST_SUITE_P(Vera, UnsupportedLayers, testing::Values(UnsupportedLayer{"VERA", "emb", {}}),
//                            UnsupportedLayerName());
//
// MethodVariants checks, per variant: the adapter changes the output, merging reproduces it and unmerging
// restores the weights (or, for a method that cannot merge, merging is refused without changes), training reaches every adapter tensor and no base tensor, save/load (also with
// low_cpu_mem_usage) round-trips, the config survives JSON, and state-dict injection adapts the layers its keys
// name. UnsupportedLayers checks that a layer type the method cannot adapt is refused without changes.

#include <functional>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <peft/config.h>

#include "support/layers.h"
#include "support/vector_model.h"  // GPT2Conv1D

namespace peft_test {

// x (3, 16) -> lin0 (16 -> 24) -> norm -> relu -> lin1 (24 -> 16)
struct MlpImpl : torch::nn::Module {
  nn::Linear lin0{nullptr}, lin1{nullptr};
  nn::LayerNorm norm{nullptr};
  MlpImpl() {
    lin0 = register_module("lin0", nn::Linear(16, 24));
    norm = register_module("norm", nn::LayerNorm(torch::nn::LayerNormOptions({24})));
    lin1 = register_module("lin1", nn::Linear(24, 16));
  }
  torch::Tensor forward(const torch::Tensor& x) { return lin1(torch::relu(norm(lin0(x)))); }
};
TORCH_MODULE(Mlp);

// x (.., in) -> lin (in -> out): the one-layer model of the methods' own tests.
struct OneLinearImpl : torch::nn::Module {
  nn::Linear lin{nullptr};
  explicit OneLinearImpl(int64_t in = 5, int64_t out = 6, bool bias = true) {
    lin = register_module("lin", nn::Linear(torch::nn::LinearOptions(in, out).bias(bias)));
  }
  torch::Tensor forward(const torch::Tensor& x) { return lin(x); }
};
TORCH_MODULE(OneLinear);

/// The Mlp's two Linears, as variants' target_modules.
inline const nlohmann::json kMlpTargets = {"lin0", "lin1"};

/// The text of the peft::ConfigError that parsing and validating this adapter_config.json raises; "" when it is
/// accepted.
std::string config_error(const nlohmann::json& adapter_config);

/// A OneLinear drawn after torch::manual_seed(0), in eval mode.
OneLinear seeded_one_linear(int64_t in = 5, int64_t out = 6, bool bias = true);

/// GPT-2's Conv1D (weight stored (in, out); module "lin", in 6, out 8) adapted by `config` gives the output of a
/// Linear holding the transposed weight adapted by the same config and seed, unmerged and merged, and Python's
/// warning that fan_in_fan_out is set to True. `before_merge` sees the adapted Conv1D model.
void expect_conv1d_matches_linear_form(const peft::PeftConfig& config,
                                       const std::function<void(torch::nn::Module&)>& before_merge = {});

// x (2, 4, 6, 6) -> conv (4 -> 8, 3x3, padding 1) -> relu -> point (8 -> 4, 1x1)
struct ConvNetImpl : torch::nn::Module {
  nn::Conv2d conv{nullptr}, point{nullptr};
  ConvNetImpl() {
    conv = register_module("conv", nn::Conv2d(torch::nn::Conv2dOptions(4, 8, 3).padding(1)));
    point = register_module("point", nn::Conv2d(torch::nn::Conv2dOptions(8, 4, 1)));
  }
  torch::Tensor forward(const torch::Tensor& x) { return point(torch::relu(conv(x))); }
};
TORCH_MODULE(ConvNet);

// Layer types most methods cannot adapt: an embedding and transformers' Conv1D.
struct OddLayersImpl : torch::nn::Module {
  nn::Embedding emb{nullptr};
  GPT2Conv1D conv1d{nullptr};
  OddLayersImpl() {
    emb = register_module("emb", nn::Embedding(10, 20));
    conv1d = register_module("conv1d", GPT2Conv1D(20, 20));
  }
  torch::Tensor forward(const torch::Tensor& x) { return conv1d(emb(x)); }
};
TORCH_MODULE(OddLayers);

/// One configuration of a method, on the Mlp (conv == false) or the ConvNet.
struct Variant {
  std::string name;
  bool conv;            // ConvNet instead of Mlp
  nlohmann::json config;
  bool merges = true;   // false: Python cannot merge the method either, so merging must be refused
};

class MethodVariants : public testing::TestWithParam<Variant> {};

/// GoogleTest's name for a variant: its name.
struct VariantName {
  std::string operator()(const testing::TestParamInfo<Variant>& info) const { return info.param.name; }
};

/// A layer of OddLayers (emb, conv1d) the method cannot adapt, with the config fields it needs besides
/// peft_type and target_modules.
struct UnsupportedLayer {
  std::string peft_type;
  std::string layer;
  nlohmann::json extra = nlohmann::json::object();
};

class UnsupportedLayers : public testing::TestWithParam<UnsupportedLayer> {};

struct UnsupportedLayerName {
  std::string operator()(const testing::TestParamInfo<UnsupportedLayer>& info) const {
    return info.param.peft_type + "_" + info.param.layer;
  }
};

}  // namespace peft_test
