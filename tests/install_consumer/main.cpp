#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <peft/peft.h>

int main() {
  // Unmodified LibTorch layers where the installed peft routes them (peft::peft with libpeft_interpose),
  // the drop-in layer otherwise.
  torch::nn::Sequential model = peft::routes_torch_layers() ? torch::nn::Sequential(torch::nn::Linear(4, 4))
                                                            : torch::nn::Sequential(peft::Linear(4, 4));
  const auto x = torch::ones({1, 4});
  const auto before = model->forward(x);
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"0"}).init_lora_weights(false), model);
  return torch::allclose(before, model->forward(x)) ? 1 : 0;  // the adapter must change the output
}
