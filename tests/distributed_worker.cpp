// A data-parallel LoRA training run for tests/test_distributed.cpp, started by `peft-cpp launch -n N`.
//   peft_distributed_worker train OUT_DIR   K steps of AdamW on a global batch of 16 split across the ranks;
//                                           rank 0 saves the adapter to OUT_DIR
//   peft_distributed_worker crash           rank 1 dies after one step; the others would wait in all_reduce

#include <cstdlib>
#include <iostream>

#include <torch/torch.h>

#include <peft/distributed.h>
#include <peft/peft.h>

namespace {

struct NetImpl : torch::nn::Module {
  peft::Linear lin0{nullptr}, lin1{nullptr}, head{nullptr};  // drop-in layers: runs in every build
  NetImpl() {
    lin0 = register_module("lin0", peft::Linear(6, 16));
    lin1 = register_module("lin1", peft::Linear(16, 16));
    head = register_module("head", peft::Linear(16, 3));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(torch::relu(lin1(torch::relu(lin0(x))))); }
};
TORCH_MODULE(Net);

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: peft_distributed_worker train OUT_DIR | crash\n";
    return 2;
  }
  const std::string mode = argv[1];
  try {
    const auto env = peft::distributed::Environment::from_env();
    auto group = peft::distributed::init_gloo(env, std::chrono::seconds(30));
    // Every rank builds the same base; the adapter differs per rank until rank 0's is broadcast.
    torch::manual_seed(3);
    Net net;
    torch::manual_seed(100 + env.rank);
    peft::inject_adapter_in_model(peft::LoraConfig().r(4).lora_alpha(8).target_modules({"lin0", "lin1"})
                                      .modules_to_save(std::vector<std::string>{"head"}),
                                  net);
    peft::distributed::broadcast_trainable(net, *group);
    torch::optim::AdamW optimizer(peft::trainable_tensors(net), torch::optim::AdamWOptions(1e-2));
    const int64_t global_batch = 16, local = global_batch / env.world_size;
    for (int step = 0; step < 5; ++step) {
      if (mode == "crash" && env.rank == 1 && step == 1) std::_Exit(3);
      auto gen = at::make_generator<at::CPUGeneratorImpl>(200 + step);
      const auto x = at::randn({global_batch, 6}, gen).narrow(0, env.rank * local, local);
      const auto y = at::randint(0, 3, {global_batch}, gen).narrow(0, env.rank * local, local);
      optimizer.zero_grad();
      torch::nn::functional::cross_entropy(net->forward(x), y).backward();
      peft::distributed::all_reduce_gradients(net, *group);
      optimizer.step();
    }
    if (mode == "train" && env.rank == 0) peft::save_adapter(net, argv[2]);
    group->barrier()->wait();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "peft_distributed_worker: " << e.what() << "\n";
    return 1;
  }
}
