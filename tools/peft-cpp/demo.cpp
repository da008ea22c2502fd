// peft-cpp demo: the adapter-injection guide on its example model, then the command-line tools on the files
// it wrote: inspect the adapter, merge it into the saved base weights, check the merged model.

#include <iostream>

#include <torch/torch.h>

#include <peft/peft.h>

#include "commands.h"
#include "files.h"

namespace peft_cli {
namespace {

// The guide's model, written with plain torch::nn layers (or peft's drop-ins, where this build of peft-cpp
// does not route torch::nn calls).
template <class Embedding, class Linear>
struct DummyModelImpl : torch::nn::Module {
  Embedding embedding{nullptr};
  Linear linear{nullptr}, lm_head{nullptr};
  DummyModelImpl() : torch::nn::Module("DummyModel") {
    embedding = register_module("embedding", Embedding(10, 10));
    linear = register_module("linear", Linear(10, 10));
    lm_head = register_module("lm_head", Linear(10, 10));
  }
  torch::Tensor forward(torch::Tensor ids) { return lm_head(linear(embedding(ids))); }
};

template <class DummyModel>
int run_demo(const fs::path& dir, std::ostream& out);

}  // namespace

int demo(const fs::path& dir, std::ostream& out) {
  if (peft::routes_torch_layers()) return run_demo<DummyModelImpl<torch::nn::Embedding, torch::nn::Linear>>(dir, out);
  out << "(this build does not route torch::nn calls: the model is built from peft::Embedding / peft::Linear)\n";
  return run_demo<DummyModelImpl<peft::Embedding, peft::Linear>>(dir, out);
}

namespace {

template <class DummyModel>
int run_demo(const fs::path& dir, std::ostream& out) {
  fs::remove_all(dir);
  fs::create_directories(dir / "base");
  torch::manual_seed(0);
  auto model = std::make_shared<DummyModel>();
  model->eval();
  const auto ids = torch::tensor({{0, 1, 2, 3, 4, 5, 6, 7}});
  const auto before = model->forward(ids);
  peft::StateDict base;
  for (const auto& p : model->named_parameters()) base.insert(p.key(), p.value().detach().clone());
  peft::safetensors::save_file(base, (dir / "base" / "model.safetensors").string(), {{"format", "pt"}});

  out << "== 1. inject LoRA into the guide's DummyModel (target_modules=[\"linear\"], r=64, alpha=16)\n";
  auto config = peft::LoraConfig().r(64).lora_alpha(16).lora_dropout(0.1).target_modules({"linear"}).init_lora_weights(false);
  peft::inject_adapter_in_model(config, model);
  out << *model << "\n";
  peft::print_trainable_parameters(*model, out);
  const auto adapted = model->forward(ids);
  out << "output moved by the adapter: max |diff| = " << (adapted - before).abs().max().template item<float>() << "\n\n";

  out << "== 2. save it as Python PEFT would (adapter_config.json + adapter_model.safetensors)\n";
  peft::save_adapter(*model, (dir / "adapter").string());
  out << (dir / "adapter").string() << "\n\n";

  out << "== 3. peft-cpp inspect " << (dir / "adapter").string() << "\n";
  inspect({dir / "adapter", false}, out);
  out << "\n";

  out << "== 4. peft-cpp merge --base " << (dir / "base").string() << " --adapter " << (dir / "adapter").string()
      << " --out " << (dir / "merged").string() << "\n";
  MergeOptions merge_options;
  merge_options.base = dir / "base";
  merge_options.adapters = {dir / "adapter"};
  merge_options.out = dir / "merged";
  merge(merge_options, out);

  auto merged = std::make_shared<DummyModel>();
  merged->eval();
  const peft::StateDict weights = peft::safetensors::load_file((dir / "merged" / "model.safetensors").string());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : merged->named_parameters()) p.value().copy_(weights[p.key()]);
  }
  const float diff = (merged->forward(ids) - adapted).abs().max().template item<float>();
  out << "plain model with the merged weights vs the adapted model: max |diff| = " << diff << "\n";
  const bool ok = diff < 1e-4f;
  out << (ok ? "demo ok" : "demo FAILED: the merged weights do not reproduce the adapter") << "\n";
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace peft_cli
