// One example per adapter method: build its config, inject it into an unmodified LibTorch model, run it,
// save and reload it, then merge it into the base weights. Exits non-zero if any step disagrees.
//
//   adapter_methods [output-directory]

#include <filesystem>
#include <functional>
#include <iostream>

#include <torch/torch.h>

#include <peft/peft.h>

// A small model written with plain torch::nn layers: lin0 -> norm -> relu -> lin1, and a conv branch.
struct NetImpl : torch::nn::Module {
  torch::nn::Linear lin0{nullptr}, lin1{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Conv2d conv{nullptr};
  NetImpl() {
    lin0 = register_module("lin0", torch::nn::Linear(32, 64));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({64})));
    lin1 = register_module("lin1", torch::nn::Linear(64, 32));
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 8, 3).padding(1)));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& image) {
    return lin1(torch::relu(norm(lin0(x)))).sum() + conv(image).sum();
  }
};
TORCH_MODULE(Net);

// TrainableTokens trains rows of an embedding: a tiny language model whose lm_head is tied to (shares the
// storage of) its embedding, so the trained tokens reach the output twice through one delta.
struct TinyLMImpl : torch::nn::Module {
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::Linear lm_head{nullptr};
  TinyLMImpl() {
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(100, 32));
    lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(32, 100).bias(false)));
    torch::NoGradGuard no_grad;
    lm_head->weight.set_(embed_tokens->weight);
  }
  torch::Tensor forward(const torch::Tensor& ids) { return lm_head(embed_tokens(ids)).log_softmax(-1).sum(); }
};
TORCH_MODULE(TinyLM);

struct Example {
  const char* title;
  std::function<std::shared_ptr<peft::PeftConfig>()> config;
  bool merges = true;  // false: the method cannot be merged (as in Python), and says so with peft::MergeError
};

// Each config starts from a random (not a no-op) adapter where the method allows, so its effect shows.
std::vector<Example> examples() {
  auto shared = [](auto config) { return std::make_shared<decltype(config)>(std::move(config)); };
  return {
      {"LoRA", [=] { return shared(peft::LoraConfig().r(8).lora_alpha(16).target_modules({"lin0", "lin1", "conv"}).init_lora_weights(false)); }},
      {"LoHa", [=] { return shared(peft::LoHaConfig().r(4).alpha(8).target_modules({"lin0", "lin1", "conv"}).init_weights(false)); }},
      {"LoKr", [=] { return shared(peft::LoKrConfig().r(4).decompose_both(true).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"IA3", [=] { return shared(peft::IA3Config().target_modules({"lin0", "lin1", "conv"}).feedforward_modules({"lin1"}).init_ia3_weights(false)); }},
      {"AdaLoRA", [=] { return shared(peft::AdaLoraConfig().init_r(8).target_r(4).total_step(100).target_modules({"lin0", "lin1"}).init_lora_weights(false)); }},
      {"OFT", [=] { return shared(peft::OFTConfig().oft_block_size(8).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"BOFT", [=] { return shared(peft::BOFTConfig().boft_block_size(4).boft_n_butterfly_factor(2).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"HRA", [=] { return shared(peft::HRAConfig().r(4).apply_GS(true).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"FourierFT", [=] { return shared(peft::FourierFTConfig().n_frequency(100).scaling(100.0).target_modules({"lin0", "lin1"})); }},
      {"SHiRA", [=] { return shared(peft::ShiraConfig().r(4).random_seed(0).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"WaveFT", [=] { return shared(peft::WaveFTConfig().n_frequency(200).wavelet_family("db2").target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"C3A", [=] { return shared(peft::C3AConfig().block_size(16).target_modules({"lin0", "lin1"}).init_weights("gaussian")); }},
      {"MiSS", [=] { return shared(peft::MissConfig().r(8).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"VeRA", [=] { return shared(peft::VeraConfig().r(16).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"PVeRA", [=] { return shared(peft::PveraConfig().r(16).generator_seed(0).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"RandLoRA", [=] { return shared(peft::RandLoraConfig().r(4).randlora_alpha(8).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"PEANuT", [=] { return shared(peft::PeanutConfig().r(4).depth(1).act_fn("gelu").target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"VB-LoRA", [=] { return shared(peft::VBLoRAConfig().r(4).num_vectors(32).vector_length(16).init_vector_bank_bound(0.5).target_modules({"lin0", "lin1"})); }},
      {"LN tuning", [=] { return shared(peft::LNTuningConfig().target_modules({"norm"})); }},
      {"Lily", [=] { return shared(peft::LilyConfig().r(8).num_B(2).target_modules({"lin0", "lin1"}).init_weights(false)); }, false},
      {"RoAd", [=] { return shared(peft::RoadConfig().variant("road_2").group_size(16).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"DeLoRA", [=] { return shared(peft::DeloraConfig().r(8).delora_lambda(15).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"DeFT", [=] { return shared(peft::DeftConfig().r(8).alpha(16).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"BEFT", [=] { return shared(peft::BeftConfig().target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"GLoRA", [=] { return shared(peft::GloraConfig().r(4).config_D_E("vector").target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"Super-Tuning", [=] { return shared(peft::SupertuningConfig().sparsity(0.9).r(4).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"GraLoRA", [=] { return shared(peft::GraloraConfig().r(8).gralora_k(2).hybrid_r(2).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"UniLoRA", [=] { return shared(peft::UniLoraConfig().r(4).theta_d_length(64).init_theta_d_bound(0.5).target_modules({"lin0", "lin1"})); }},
      {"TinyLoRA", [=] { return shared(peft::TinyLoraConfig().r(2).u(8).weight_tying(0.5).init_weights("uniform").init_v_bound(0.5).target_modules({"lin0", "lin1"})); }},
      {"HiRA", [=] { return shared(peft::HiraConfig().r(4).target_modules({"lin0", "lin1", "conv"}).init_weights(false)); }},
      {"PSOFT", [=] { return shared(peft::PsoftConfig().r(8).psoft_alpha(16).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"OSF", [=] { return shared(peft::OsfConfig().effective_rank(0.75).target_modules({"lin0", "lin1"})); }},
      {"FRoD", [=] { return shared(peft::FrodConfig().sparse_rate(0.05).target_modules({"lin0", "lin1"}).init_weights(false)); }},
      {"AdaMSS", [=] { return shared(peft::AdamssConfig().r(16).num_subspaces(4).subspace_rank(2).target_modules({"lin0", "lin1"}).init_weights(std::nullopt)); }},
  };
}

// Prints one line per example; false when a step disagrees.
bool report(const char* title, int64_t trainable, const torch::Tensor& base, const torch::Tensor& adapted,
            const torch::Tensor& reloaded, const torch::Tensor& merged) {
  const double effect = (adapted - base).abs().item<double>();
  const double reload_diff = (reloaded - adapted).abs().item<double>();
  const double merge_diff = (merged - adapted).abs().item<double>();
  const bool ok = effect > 1e-4 && reload_diff < 1e-3 && merge_diff < 1e-2 * (1 + adapted.abs().item<double>());
  std::cout << (ok ? "ok   " : "FAIL ") << title << ": " << trainable << " trainable parameters, output moved by "
            << effect << ", reload diff " << reload_diff << ", merged diff " << merge_diff << "\n";
  return ok;
}

// TrainableTokens on TinyLM: target_modules left unset picks "embed_tokens", and lm_head, which shares its
// weight, uses the same delta.
bool trainable_tokens_example(const std::filesystem::path& root) {
  const auto ids = torch::randint(100, {4, 16});
  torch::manual_seed(0);
  TinyLM lm;
  lm->eval();
  const auto base = lm->forward(ids);
  const auto config = peft::TrainableTokensConfig().token_indices({5, 17, 42}).init_weights(false);
  peft::inject_adapter_in_model(config, lm);
  const auto adapted = lm->forward(ids);

  const auto dir = root / config.peft_type();
  peft::save_adapter(*lm, dir.string());
  torch::manual_seed(0);
  TinyLM fresh;
  fresh->eval();
  peft::load_adapter(*fresh, dir.string());
  const auto reloaded = fresh->forward(ids);
  peft::merge_and_unload(*fresh);
  const auto merged = fresh->forward(ids);
  return report("TrainableTokens (tied lm_head)", peft::trainable_parameters(*lm).trainable, base, adapted, reloaded,
                merged);
}

// Poly on Net's Linear layers, with a (batch, sequence, features) input: every forward names each sample's task
// with a peft::TaskIds guard. Poly cannot be merged (as in Python): the merge is refused and the adapter still runs.
bool poly_example(const std::filesystem::path& root) {
  const auto x = torch::randn({3, 5, 32}), image = torch::randn({2, 4, 6, 6});
  const auto task_ids = torch::tensor({2, 0, 1});
  torch::manual_seed(0);
  Net net;
  net->eval();
  const auto base = net->forward(x, image);
  const auto config = peft::PolyConfig().r(4).n_tasks(3).n_skills(4).n_splits(2).target_modules({"lin0", "lin1"}).init_weights(false);
  peft::inject_adapter_in_model(config, net);
  torch::Tensor adapted, reloaded, merged;
  {
    const peft::TaskIds tasks(*net, task_ids);
    adapted = net->forward(x, image);
  }
  const auto dir = root / config.peft_type();
  peft::save_adapter(*net, dir.string());
  torch::manual_seed(0);
  Net fresh;
  fresh->eval();
  peft::load_adapter(*fresh, dir.string());
  const peft::TaskIds tasks(*fresh, task_ids);
  reloaded = fresh->forward(x, image);
  bool refused = false;
  try {
    peft::merge_and_unload(*fresh);
  } catch (const peft::MergeError&) {
    refused = true;
  }
  if (!refused) std::cout << "FAIL Poly: merge_and_unload should have been refused\n";
  merged = fresh->forward(x, image);
  return report("Poly (task ids per sample)", peft::trainable_parameters(*net).trainable, base, adapted, reloaded, merged) &&
         refused;
}

// X-LoRA on a small language model: two LoRA experts (saved adapter directories, as Python's X-LoRA takes them) mixed
// per token by a classifier that reads the last hidden state. The model-specific passes are two lambdas. X-LoRA
// cannot be merged (as in Python), so its "merged" output is the reloaded one.
struct SmallLMImpl : torch::nn::Module {
  torch::nn::Embedding embed{nullptr};
  torch::nn::Linear mlp{nullptr}, lm_head{nullptr};
  SmallLMImpl() {
    embed = register_module("embed", torch::nn::Embedding(100, 32));
    mlp = register_module("mlp", torch::nn::Linear(32, 32));
    lm_head = register_module("lm_head", torch::nn::Linear(32, 100));
  }
  torch::Tensor hidden(const torch::Tensor& ids) {
    const auto h = embed(ids);
    return h + torch::relu(mlp(h));
  }
  torch::Tensor forward(const torch::Tensor& ids) { return lm_head(hidden(ids)); }
};
TORCH_MODULE(SmallLM);

bool xlora_example(const std::filesystem::path& root) {
  const auto ids = torch::randint(100, {2, 8});
  peft::PatternMap<std::string> experts;
  for (int i = 0; i < 2; ++i) {
    torch::manual_seed(10 + i);
    SmallLM lm;
    peft::inject_adapter_in_model(peft::LoraConfig().r(4).target_modules({"mlp", "lm_head"}).init_lora_weights(false), lm);
    const auto dir = root / "xlora_experts" / std::to_string(i);
    peft::save_adapter(*lm, dir.string());
    experts.emplace_back(std::to_string(i), dir.string());
  }
  auto passes = [](SmallLM lm) {
    return peft::XLoraPasses{[p = lm.ptr()](const torch::Tensor& t) { return p->hidden(t); },
                             [p = lm.ptr()](const torch::Tensor& t) { return p->forward(t); }};
  };
  torch::manual_seed(0);
  SmallLM lm;
  lm->eval();
  const auto base = lm->forward(ids).sum();
  peft::XLoraModel xlora(lm, peft::XLoraConfig().hidden_size(32).xlora_depth(2).xlora_size(16).adapters(experts),
                         passes(lm));
  xlora->eval();
  const auto adapted = xlora->forward(ids).sum();
  const auto dir = root / "XLORA";
  peft::save_xlora(xlora, dir.string());

  torch::manual_seed(0);
  SmallLM fresh;
  fresh->eval();
  peft::XLoraModel reloaded_model = peft::load_xlora(fresh, dir.string(), passes(fresh));
  reloaded_model->eval();
  const auto reloaded = reloaded_model->forward(ids).sum();
  int64_t trainable = 0;
  for (const auto& p : xlora->parameters()) trainable += p.numel();
  return report("X-LoRA (2 LoRA experts mixed per token)", trainable, base, adapted, reloaded, reloaded);
}

int main(int argc, char** argv) {
  const std::filesystem::path root = argc > 1 ? argv[1] : std::filesystem::temp_directory_path() / "peft-cpp-methods";
  const auto x = torch::randn({4, 32}), image = torch::randn({2, 4, 6, 6});
  int failures = 0;
  for (const Example& example : examples()) {
    torch::manual_seed(0);
    Net net;
    net->eval();
    const auto base = net->forward(x, image);
    const std::shared_ptr<peft::PeftConfig> config = example.config();
    peft::inject_adapter_in_model(*config, net);
    if (example.title == std::string("LN tuning")) {
      // A fresh copy of the LayerNorm equals the original; training would change it. Simulate that.
      torch::NoGradGuard no_grad;
      for (auto& p : net->named_parameters()) {
        if (p.key().find("ln_tuning_layers") != std::string::npos) p.value().add_(0.5);
      }
    }
    if (example.title == std::string("OSF")) {
      // OSF starts from the SVD of the weight (the same layer); training would move the trained singular values.
      torch::NoGradGuard no_grad;
      for (auto& p : net->named_parameters()) {
        if (p.key().find("S_low") != std::string::npos) p.value().mul_(3.0);
      }
    }
    const auto adapted = net->forward(x, image);

    const auto dir = root / config->peft_type();
    peft::save_adapter(*net, dir.string());
    torch::manual_seed(0);
    Net fresh;
    fresh->eval();
    peft::load_adapter(*fresh, dir.string());
    const auto reloaded = fresh->forward(x, image);

    bool merge_as_expected = true;
    if (example.merges) {
      peft::merge_and_unload(*fresh);
    } else {
      // Python cannot merge this method either: refused before anything changes, so the adapter still runs.
      try {
        peft::merge_and_unload(*fresh);
        merge_as_expected = false;
        std::cout << "FAIL " << example.title << ": merge_and_unload should have been refused\n";
      } catch (const peft::MergeError&) {
      }
    }
    const auto merged = fresh->forward(x, image);

    const bool ok = report(example.title, peft::trainable_parameters(*net).trainable, base, adapted, reloaded, merged);
    failures += ok && merge_as_expected ? 0 : 1;
  }
  failures += trainable_tokens_example(root) ? 0 : 1;
  failures += poly_example(root) ? 0 : 1;
  failures += xlora_example(root) ? 0 : 1;
  return failures == 0 ? 0 : 1;
}
