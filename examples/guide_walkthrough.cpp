// Python PEFT's "adapter injection" guide, in C++: inject LoRA into a model written with plain LibTorch
// layers, run it, save the adapter, and load it into a fresh model.
//
//   guide_walkthrough [output-directory]

#include <filesystem>
#include <iostream>

#include <torch/torch.h>

#include <peft/peft.h>

// Unmodified user code: torch::nn types only.
struct DummyModelImpl : torch::nn::Module {
  torch::nn::Embedding embedding{nullptr};
  torch::nn::Linear linear{nullptr}, lm_head{nullptr};
  DummyModelImpl() {
    embedding = register_module("embedding", torch::nn::Embedding(10, 10));
    linear = register_module("linear", torch::nn::Linear(10, 10));
    lm_head = register_module("lm_head", torch::nn::Linear(10, 10));
  }
  torch::Tensor forward(torch::Tensor ids) { return lm_head(linear(embedding(ids))); }
};
TORCH_MODULE(DummyModel);

int main(int argc, char** argv) {
  const std::filesystem::path dir = argc > 1 ? argv[1] : std::filesystem::temp_directory_path() / "peft-cpp-demo";
  std::filesystem::create_directories(dir);
  torch::manual_seed(0);

  // init_lora_weights(false) gives a random adapter, so its effect is visible right away.
  auto cfg = peft::LoraConfig().lora_alpha(16).lora_dropout(0.1).r(64).bias("none").target_modules({"linear"})
                 .init_lora_weights(false);
  DummyModel model;
  model->eval();
  const auto ids = torch::tensor({{0, 1, 2, 3, 4, 5, 6, 7}});
  const auto before = model->forward(ids);

  peft::inject_adapter_in_model(cfg, model);  // in place: model now carries the adapter
  std::cout << *model << "\n\n";
  const auto after = model->forward(ids);
  std::cout << "output changed by the adapter: max |after - before| = " << (after - before).abs().max().item<float>()
            << "\n";

  peft::StateDict sd = peft::get_peft_model_state_dict(model);
  std::cout << "adapter state dict:";
  for (const auto& item : sd) std::cout << " " << item.key() << " " << item.value().sizes();
  std::cout << "\n";
  const auto file = (dir / "adapter_model.safetensors").string();
  peft::safetensors::save_file(sd, file, {{"format", "pt"}});
  std::cout << "saved " << file << "\n";

  // A fresh model: same base weights, new (random) adapter, then the saved adapter loaded into it.
  torch::manual_seed(0);
  DummyModel fresh;
  fresh->eval();
  peft::inject_adapter_in_model(cfg, fresh);
  peft::LoadResult outcome = peft::set_peft_model_state_dict(fresh, peft::safetensors::load_file(file));
  std::cout << "loaded: " << outcome.missing_keys.size() << " missing keys, " << outcome.unexpected_keys.size()
            << " unexpected keys\n";
  const auto reloaded = fresh->forward(ids);
  const float diff = (reloaded - after).abs().max().item<float>();
  std::cout << "fresh model with the loaded adapter matches: max |diff| = " << diff << "\n";
  return diff == 0.0f ? 0 : 1;
}
