// AdaLoRA's training-time rank allocation: the budget schedule, pruning to the target budget, the saved
// checkpoint holding only the kept ranks, and loading it back with the saved rank_pattern.

#include <filesystem>

#include "support/layers.h"
#include "support/vectors.h"
#include "support/warnings.h"

namespace peft_test::adalora_test {
namespace {

namespace fs = std::filesystem;

struct NetImpl : torch::nn::Module {
  nn::Linear lin0{nullptr}, lin1{nullptr};
  NetImpl() {
    lin0 = register_module("lin0", nn::Linear(12, 16));
    lin1 = register_module("lin1", nn::Linear(16, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return lin1(torch::relu(lin0(x))); }
};
TORCH_MODULE(Net);

peft::AdaLoraConfig config() {
  return peft::AdaLoraConfig()
      .target_modules({"lin0", "lin1"})
      .init_r(6)
      .target_r(2)
      .tinit(2)
      .tfinal(3)
      .total_step(12)
      .lora_alpha(8);
}

Net make_net() {
  torch::manual_seed(0);
  Net net;
  return net;
}

TEST(AdaLora, BudgetShrinksFromInitialToTargetBetweenTinitAndTfinal) {
  Net net = make_net();
  peft::inject_adapter_in_model(config(), net);
  peft::AdaLoraRankAllocator allocator(*net);
  EXPECT_EQ(allocator.initial_budget(), 12);  // 2 layers x init_r 6
  EXPECT_EQ(allocator.target_budget(), 4);    // 2 layers x target_r 2
  EXPECT_EQ(allocator.budget_schedule(0), std::make_pair(int64_t{12}, false));
  EXPECT_EQ(allocator.budget_schedule(2), std::make_pair(int64_t{12}, false));
  int64_t previous = 12;
  for (int64_t step = 3; step <= 9; ++step) {
    const auto [budget, mask] = allocator.budget_schedule(step);
    EXPECT_LE(budget, previous);
    EXPECT_GE(budget, 4);
    EXPECT_TRUE(mask);
    previous = budget;
  }
  EXPECT_EQ(allocator.budget_schedule(9).first, 4);
  EXPECT_EQ(allocator.budget_schedule(10), std::make_pair(int64_t{4}, true));
}

TEST(AdaLora, TrainingPrunesToTheTargetAndSavesOnlyTheKeptRanks) {
  WarningCapture warnings;
  Net net = make_net();
  peft::inject_adapter_in_model(config(), net);
  net->train();
  peft::AdaLoraRankAllocator allocator(*net);
  torch::optim::SGD optimizer(net->parameters(), 0.01);
  const torch::Tensor x = torch::randn({8, 12}), y = torch::randn({8, 4});

  const at::Tensor regularization = allocator.orthogonal_regularization();
  EXPECT_GT(regularization.item<double>(), 0.0);
  EXPECT_TRUE(regularization.requires_grad());

  for (int64_t step = 0; step < 12; ++step) {
    const auto loss = torch::mse_loss(net->forward(x), y) + allocator.orthogonal_regularization();
    loss.backward();
    optimizer.step();
    allocator.update_and_allocate(step);
    optimizer.zero_grad();
  }

  const auto& stored = dynamic_cast<const peft::AdaLoraConfig&>(*peft::adapter_config(*net, "default"));
  ASSERT_TRUE(stored.rank_pattern().has_value());
  int64_t kept = 0;
  for (const auto& [key, flags] : *stored.rank_pattern()) {
    EXPECT_EQ(flags.size(), 6u) << key;
    kept += std::count(flags.begin(), flags.end(), true);
    // Pruned singular values are zero.
    const at::Tensor e = net->named_parameters()[key + ".default"];
    for (size_t i = 0; i < flags.size(); ++i) {
      if (!flags[i]) EXPECT_EQ(e[static_cast<int64_t>(i)].item<double>(), 0.0) << key << "[" << i << "]";
    }
  }
  EXPECT_EQ(kept, 4);

  // The checkpoint holds only the kept ranks.
  const peft::StateDict saved = peft::get_peft_model_state_dict(*net);
  int64_t saved_rank = 0;
  for (const char* layer : {"lin0", "lin1"}) {
    const int64_t r = saved[std::string(layer) + ".lora_E"].size(0);
    EXPECT_EQ(saved[std::string(layer) + ".lora_A"].size(0), r);
    EXPECT_EQ(saved[std::string(layer) + ".lora_B"].size(1), r);
    saved_rank += r;
  }
  EXPECT_EQ(saved_rank, 4);

  // A fresh model loads it with the saved rank_pattern and computes the same.
  net->eval();
  const at::Tensor expected = net->forward(x);
  const fs::path dir = fs::temp_directory_path() / ("peft_adalora_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  peft::save_adapter(*net, dir.string());
  Net fresh = make_net();
  fresh->eval();
  const peft::LoadResult result = peft::load_adapter(*fresh, dir.string());
  EXPECT_TRUE(result.missing_keys.empty());
  EXPECT_LT(max_abs_diff(fresh->forward(x), expected), 1e-5);
  fs::remove_all(dir);
}

TEST(AdaLora, OnlyOneTrainableAdapter) {
  WarningCapture warnings;
  Net net = make_net();
  peft::inject_adapter_in_model(config(), net);
  EXPECT_THROW(peft::inject_adapter_in_model(config(), net, "second"), peft::ConfigError);
  peft::inject_adapter_in_model(config().inference_mode(true), net, "frozen");
  EXPECT_THROW(peft::AdaLoraRankAllocator(*net, "frozen"), peft::ConfigError);
}

TEST(AdaLora, ConfigChecks) {
  EXPECT_THROW(peft::AdaLoraConfig().target_modules({"lin0"}).validate(), peft::ConfigError);  // no total_step
  EXPECT_THROW(config().tinit(9).validate(), peft::ConfigError);                               // no budgeting phase
  EXPECT_THROW(config().orth_reg_weight(-1).validate(), peft::ConfigError);
  WarningCapture warnings;
  config().r(4).validate();
  EXPECT_TRUE(warnings.contains("`r` is not used in AdaLora"));
}

TEST(AdaLora, AllocatorNeedsGradients) {
  Net net = make_net();
  peft::inject_adapter_in_model(config(), net);
  peft::AdaLoraRankAllocator allocator(*net);
  EXPECT_THROW(allocator.update_and_allocate(0), peft::ConfigError);
}

}  // namespace
}  // namespace peft_test::adalora_test
