// Training adapters: which tensors train, gradients against Python PEFT's, and a resumable training loop.

#include <filesystem>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <peft/peft.h>
#include <peft/training.h>

#include "support/layers.h"
#include "support/vector_model.h"
#include "support/vectors.h"

namespace peft_test::training_test {
namespace {

namespace fs = std::filesystem;

const fs::path kGradients = PEFT_GRADIENTS_DIR;  // tests/data/gradients (generate.py says how it was made)

bool is_adapter_tensor(const std::string& name, const peft::StateDict& expected) { return expected.contains(name); }

class TrainingGradients : public testing::TestWithParam<std::string> {};

TEST_P(TrainingGradients, MatchPythonPeft) {
  const VectorCase c = VectorCase::load(GetParam());
  VectorModel model = base_model(c);
  inject_case_adapters(model, c);  // loaded from adapter_config.json: inference_mode, so frozen
  EXPECT_TRUE(peft::trainable_tensors(model).empty());
  peft::mark_only_adapters_as_trainable(model);

  const peft::StateDict expected = peft::safetensors::load_file((kGradients / c.name / "grads.safetensors").string());
  const at::Tensor w = peft::safetensors::load_file((kGradients / c.name / "loss_weights.safetensors").string())["w"];
  const peft::StateDict trainable = peft::named_trainable_tensors(model);
  EXPECT_EQ(trainable.keys(), expected.keys());

  (model->forward(c.input()) * w).sum().backward();
  for (const auto& item : model->named_parameters()) {
    const at::Tensor& grad = item.value().grad();
    if (!is_adapter_tensor(item.key(), expected)) {
      // No gradient memory for the base model: autograd never allocated one.
      EXPECT_FALSE(grad.defined()) << item.key();
      continue;
    }
    ASSERT_TRUE(grad.defined()) << item.key();
    EXPECT_LT(max_abs_diff(grad, expected[item.key()]), 1e-5) << item.key();
  }
}

INSTANTIATE_TEST_SUITE_P(Vectors, TrainingGradients,
                         testing::Values("lora_mlp_basic", "lora_mlp_rslora", "lora_mlp_dora", "lora_conv2d",
                                         "lora_embedding", "ia3_mlp", "loha_mlp", "oft_mlp"),
                         [](const auto& info) { return info.param; });

// A small model: lin0 -> relu -> lin1 -> relu -> head.
struct NetImpl : torch::nn::Module {
  nn::Linear lin0{nullptr}, lin1{nullptr}, head{nullptr};
  NetImpl() {
    lin0 = register_module("lin0", nn::Linear(6, 16));
    lin1 = register_module("lin1", nn::Linear(16, 16));
    head = register_module("head", nn::Linear(16, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(torch::relu(lin1(torch::relu(lin0(x))))); }
};
TORCH_MODULE(Net);

TEST(Training, MarkOnlyAdaptersAsTrainableFollowsBias) {
  torch::manual_seed(0);
  Net net;
  peft::inject_adapter_in_model(peft::LoraConfig().r(2).target_modules({"lin0"}).modules_to_save(std::vector<std::string>{"head"}), net);
  auto names = [&] {
    std::vector<std::string> out;
    for (const auto& item : peft::named_trainable_tensors(net)) out.push_back(item.key());
    return out;
  };
  const std::vector<std::string> adapter = {"lin0.lora_A.default.weight", "lin0.lora_B.default.weight",
                                            "head.modules_to_save.default.weight", "head.modules_to_save.default.bias"};
  EXPECT_EQ(names(), adapter);
  // Everything unfrozen by hand, then marked again: back to the adapter (and the saved copy) only.
  for (auto& p : net->parameters()) p.set_requires_grad(true);
  peft::mark_only_adapters_as_trainable(net);
  EXPECT_EQ(names(), adapter);

  peft::mark_only_adapters_as_trainable(net, "lora_only");
  std::vector<std::string> with_bias = adapter;
  with_bias.insert(with_bias.begin(), "lin0.bias");
  EXPECT_EQ(names(), with_bias);

  peft::mark_only_adapters_as_trainable(net, "all");
  EXPECT_EQ(names(), (std::vector<std::string>{"lin0.bias", "lin0.lora_A.default.weight", "lin0.lora_B.default.weight",
                                                "lin1.bias", "head.bias", "head.modules_to_save.default.weight",
                                                "head.modules_to_save.default.bias"}));
  EXPECT_THROW(peft::mark_only_adapters_as_trainable(net, "some"), peft::ConfigError);
  peft::mark_only_adapters_as_trainable(net, "none");
  EXPECT_EQ(names(), adapter);
}

TEST(Training, TrainableTensorsListASharedTensorOnce) {
  torch::manual_seed(0);
  Net net;
  peft::inject_adapter_in_model(peft::VBLoRAConfig().r(2).vector_length(2).num_vectors(8).target_modules({"lin0", "lin1"}),
                                net);
  const peft::StateDict named = peft::named_trainable_tensors(net);
  size_t banks = 0;
  for (const auto& item : named) banks += item.key().find("vblora_vector_bank") != std::string::npos;
  EXPECT_EQ(banks, 1u);
  size_t all = 0;
  for (const auto& item : net->named_parameters()) all += item.value().requires_grad();
  EXPECT_EQ(named.size() + 1, all);  // lin1's vector bank is lin0's
}

TEST(Training, MarkingAndListingNeedNoBaseValues) {
  // A base on the meta device (no memory behind it) can be marked and its adapter listed without touching data.
  torch::manual_seed(0);
  Net net;
  torch::OrderedDict<std::string, at::Tensor> meta;
  for (const auto& item : net->named_parameters()) {
    meta.insert(item.key(), torch::empty(item.value().sizes(), torch::TensorOptions().device(torch::kMeta)));
  }
  peft::assign_tensors(*net, meta);
  peft::inject_adapter_in_model(peft::LoraConfig().r(2).target_modules({"lin0", "lin1"}), net, "default",
                                /*low_cpu_mem_usage=*/true);
  peft::mark_only_adapters_as_trainable(net, "all");
  const peft::StateDict trainable = peft::named_trainable_tensors(net);
  EXPECT_EQ(trainable.size(), 7u);  // 4 LoRA factors + 3 biases
  for (const auto& item : trainable) EXPECT_TRUE(item.value().device().is_meta()) << item.key();
}

// Trains `steps` AdamW steps on fixed batches, starting at batch `first`.
void train(Net& net, torch::optim::Optimizer& optimizer, int first, int steps) {
  for (int step = first; step < first + steps; ++step) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(100 + step);
    const at::Tensor x = at::randn({8, 6}, gen);
    const at::Tensor y = at::randint(0, 3, {8}, gen);
    optimizer.zero_grad();
    torch::nn::functional::cross_entropy(net->forward(x), y).backward();
    optimizer.step();
  }
}

Net fresh_net(const peft::LoraConfig& config) {
  torch::manual_seed(3);
  Net net;
  peft::inject_adapter_in_model(config, net);
  return net;
}

TEST(Training, ResumedFromACheckpointContinuesBitIdentically) {
  const auto config = peft::LoraConfig().r(4).lora_alpha(8).target_modules({"lin0", "lin1"}).modules_to_save(std::vector<std::string>{"head"});
  const auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.01);

  Net straight = fresh_net(config);
  torch::optim::AdamW straight_optimizer(peft::trainable_tensors(straight), options);
  train(straight, straight_optimizer, 0, 6);

  const fs::path dir = fs::temp_directory_path() / ("peft_resume_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  {
    Net first = fresh_net(config);
    torch::optim::AdamW optimizer(peft::trainable_tensors(first), options);
    train(first, optimizer, 0, 3);
    peft::save_adapter(first, dir.string());
    torch::save(optimizer, (dir / "optimizer.pt").string());
  }
  // A new process would rebuild the base model and load the adapter for training.
  torch::manual_seed(3);
  Net resumed;
  peft::LoadAdapterOptions load_options;
  load_options.is_trainable = true;
  peft::load_adapter(resumed, dir.string(), "default", load_options);
  torch::optim::AdamW optimizer(peft::trainable_tensors(resumed), options);
  torch::load(optimizer, (dir / "optimizer.pt").string());
  train(resumed, optimizer, 3, 3);
  fs::remove_all(dir);

  const peft::StateDict expected = peft::get_peft_model_state_dict(straight);
  const peft::StateDict got = peft::get_peft_model_state_dict(resumed);
  ASSERT_EQ(got.keys(), expected.keys());
  for (const auto& item : expected) EXPECT_TRUE(torch::equal(got[item.key()], item.value())) << item.key();
  EXPECT_FALSE(torch::equal(expected["lin0.lora_B.weight"], torch::zeros_like(expected["lin0.lora_B.weight"])));
}

TEST(Training, FrozenBaseMappedFromAFileIsNeverWritten) {
  // Base weights viewing a memory-mapped file (copy-on-write) stay as they are: only the adapter steps.
  torch::manual_seed(0);
  Net net;
  const fs::path file = fs::temp_directory_path() / ("peft_ro_base_" + std::to_string(::getpid()) + ".safetensors");
  peft::StateDict base;
  for (const auto& item : net->named_parameters()) base.insert(item.key(), item.value().detach().clone());
  peft::safetensors::save_file(base, file.string());
  const peft::StateDict mapped = peft::safetensors::load_file(file.string());
  {
    torch::NoGradGuard no_grad;
    for (auto& item : net->named_parameters()) item.value().set_data(mapped[item.key()]);
  }
  peft::inject_adapter_in_model(peft::LoraConfig().r(2).target_modules({"lin0", "lin1", "head"}), net);
  torch::optim::SGD optimizer(peft::trainable_tensors(net), torch::optim::SGDOptions(0.1));
  train(net, optimizer, 0, 2);
  for (const auto& item : net->named_parameters()) {
    if (base.contains(item.key())) EXPECT_TRUE(torch::equal(item.value(), base[item.key()])) << item.key();
  }
  fs::remove(file);
}

}  // namespace
}  // namespace peft_test::training_test
