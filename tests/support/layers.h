#pragma once

// The layer types the tests build their models from: LibTorch's own where libpeft_interpose routes their
// calls (the default build), peft's drop-in layers where it does not (-DPEFT_INTERPOSE=OFF), so the same
// tests run in both builds. Tests of routing itself use torch::nn:: types explicitly and check
// peft::routes_torch_layers().

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <peft/layers.h>

namespace peft_test::nn {

#if PEFT_TEST_ROUTED_LAYERS
#define PEFT_TEST_LAYER(Name) using torch::nn::Name;
#else
#define PEFT_TEST_LAYER(Name) using peft::Name;
#endif
PEFT_ROUTED_LAYERS(PEFT_TEST_LAYER)
#undef PEFT_TEST_LAYER

/// Whether this test build routes calls of torch::nn layers (libpeft_interpose linked).
constexpr bool kRouted = PEFT_TEST_ROUTED_LAYERS;

}  // namespace peft_test::nn
