// Linked with libtorch_cpu ahead of libpeft, calls to torch::nn::LinearImpl::forward from this program
// bind to LibTorch, so adapters would be skipped. Injection must refuse with instructions, leave the
// model as it was, and the remedy it names (peft::Linear) must work. Exit 0 when all of that holds.

#include <iostream>

#include <torch/torch.h>

#include <peft/peft.h>

namespace {

bool refuses_plain_linear() {
  torch::nn::Sequential model(torch::nn::Linear(4, 4));
  try {
    peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"0"}), model);
  } catch (const peft::RoutingError& e) {
    const std::string message = e.what();
    std::cout << "refused: " << message << "\n";
    const bool helpful = message.find("Link libpeft before LibTorch") != std::string::npos &&
                         message.find("peft::Linear") != std::string::npos;
    const bool untouched = model[0]->named_children().is_empty();
    return helpful && untouched;
  }
  std::cerr << "injection succeeded although calls cannot reach the adapters\n";
  return false;
}

bool peft_linear_reaches_adapter() {
  torch::manual_seed(0);
  torch::nn::Sequential model(peft::Linear(4, 4));
  const auto x = torch::randn({2, 4});
  const auto before = model->forward(x);
  peft::inject_adapter_in_model(peft::LoraConfig().target_modules({"0"}).init_lora_weights(false), model);
  if (torch::allclose(before, model->forward(x))) {
    std::cerr << "peft::Linear did not reach its adapter\n";
    return false;
  }
  return true;
}

}  // namespace

int main() { return refuses_plain_linear() && peft_linear_reaches_adapter() ? 0 : 1; }
