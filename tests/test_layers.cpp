// The routed layer forwards: unadapted layers compute exactly what LibTorch computes, the peft:: drop-in
// layers behave like LibTorch's, and custom layers join through peft::LinearLike.

#include "support/vector_model.h"
#include "support/vectors.h"

namespace peft_test {
namespace {

TEST(Layers, UnadaptedLayersComputeWhatLibTorchComputes) {
  torch::manual_seed(0);
  torch::nn::Linear linear(8, 4);
  torch::nn::Embedding embedding(torch::nn::EmbeddingOptions(10, 3).padding_idx(0));
  torch::nn::Conv1d conv1(torch::nn::Conv1dOptions(2, 3, 3).padding(1).padding_mode(torch::kCircular));
  torch::nn::Conv2d conv2(torch::nn::Conv2dOptions(2, 3, 3).stride(2).dilation(2));
  torch::nn::Conv3d conv3(torch::nn::Conv3dOptions(1, 2, 2));
  torch::nn::LayerNorm norm(torch::nn::LayerNormOptions({4}));
  const auto x = torch::randn({5, 8});
  EXPECT_TRUE(torch::equal(linear(x), torch::linear(x, linear->weight, linear->bias)));
  const auto ids = torch::tensor({{0, 3, 9}});
  EXPECT_TRUE(torch::equal(embedding(ids), torch::embedding(embedding->weight, ids, 0)));
  const auto s = torch::randn({1, 2, 7});
  EXPECT_TRUE(torch::equal(conv1(s), torch::conv1d(torch::pad(s, {1, 1}, "circular"), conv1->weight, conv1->bias)));
  const auto img = torch::randn({1, 2, 9, 9});
  EXPECT_TRUE(torch::equal(conv2(img), torch::conv2d(img, conv2->weight, conv2->bias, torch::IntArrayRef{2, 2}, torch::IntArrayRef{0, 0}, torch::IntArrayRef{2, 2})));
  const auto vol = torch::randn({1, 1, 3, 3, 3});
  EXPECT_TRUE(torch::equal(conv3(vol), torch::conv3d(vol, conv3->weight, conv3->bias)));
  const auto h = torch::randn({2, 4});
  EXPECT_TRUE(torch::equal(norm(h), torch::layer_norm(h, {4}, norm->weight, norm->bias, 1e-5)));
}

TEST(Layers, PeftDropInsBehaveLikeLibTorchLayers) {
  torch::manual_seed(0);
  peft::Linear ours(8, 4);
  torch::manual_seed(0);
  torch::nn::Linear theirs(8, 4);
  const auto x = torch::randn({3, 8});
  EXPECT_TRUE(torch::equal(ours(x), theirs(x)));
  EXPECT_EQ(ours->named_parameters().keys(), theirs->named_parameters().keys());
  std::ostringstream a, b;
  a << *ours;
  b << *theirs;
  EXPECT_EQ(a.str(), b.str());
  // Usable wherever a torch::nn::Linear is expected.
  torch::nn::Sequential seq(ours);
  EXPECT_TRUE(torch::equal(seq->forward(x), theirs(x)));
}

TEST(Layers, TorchAndPeftLayersGiveTheSameAdaptedOutput) {
  const VectorCase c = VectorCase::load("lora_conv2d");
  VectorModel torch_model(c.model, LayerStyle::Torch), peft_model(c.model, LayerStyle::Peft);
  for (auto* m : {&torch_model, &peft_model}) {
    (*m)->load_base(c.tensors("base.safetensors"));
    (*m)->eval();
    peft::inject_adapter_in_model(*peft::load_config((c.dir / "adapter_config.json").string()), *m);
    peft::set_peft_model_state_dict(**m, c.tensors("adapter_model.safetensors"));
  }
  const auto x = c.input();
  EXPECT_TRUE(torch::equal(torch_model->forward(x), peft_model->forward(x)));
}

TEST(Layers, CustomLinearLikeLayerWithoutAdaptersRunsItsOwnForward) {
  torch::manual_seed(0);
  GPT2Conv1D layer(5, 3);
  const auto x = torch::randn({2, 3});
  EXPECT_TRUE(torch::allclose(layer(x), torch::matmul(x, layer->weight) + layer->bias));
}

TEST(Layers, GradientsFlowThroughRoutedAdapters) {
  torch::manual_seed(0);
  torch::nn::Sequential model(torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 4, 3).padding(1)));
  peft::inject_adapter_in_model(peft::LoraConfig().init_lora_weights(false).target_modules({"0"}), model);
  model->forward(torch::randn({1, 2, 5, 5})).sum().backward();
  auto p = model->named_parameters();
  EXPECT_TRUE(p["0.lora_A.default.weight"].grad().defined());
  EXPECT_TRUE(p["0.lora_B.default.weight"].grad().defined());
  EXPECT_FALSE(p["0.weight"].grad().defined());
}

}  // namespace
}  // namespace peft_test
