// Fine-tunes a LoRA adapter on Fashion-MNIST (Debian's dataset-fashion-mnist):
//  1. pre-trains a small MLP on the first half of the training images, using only classes 0-4;
//  2. injects LoRA into its hidden layers (the head is trained whole, as modules_to_save) and fine-tunes only
//     those on the other half, all ten classes;
//  3. prints the test accuracy before and after, and saves the adapter in Python PEFT's layout.
// Exit status 1 if fine-tuning did not improve the accuracy (CTest runs a short version).
// With --world-size N it runs as N data-parallel processes (peft::distributed over Gloo): each takes 1/N of
// every batch and the gradients are averaged, so the result matches one process up to rounding.
//
//   finetune_fashion_mnist [--data DIR] [--out DIR] [--epochs N] [--limit N] [--world-size N]

#include <chrono>
#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <torch/torch.h>
#include <zlib.h>

#include <peft/distributed.h>
#include <peft/peft.h>

namespace {

// An IDX file (gzip-compressed as Debian ships it): big-endian magic, dimensions, then uint8 data.
torch::Tensor read_idx(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw std::runtime_error("cannot open " + path + " (apt-get install dataset-fashion-mnist)");
  std::string bytes;
  char buffer[1 << 16];
  for (int n; (n = gzread(file, buffer, sizeof buffer)) > 0;) bytes.append(buffer, n);
  gzclose(file);
  auto be32 = [&](size_t at) {
    if (at + 4 > bytes.size()) throw std::runtime_error(path + " is truncated");
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.data() + at);
    return int64_t(b[0]) << 24 | int64_t(b[1]) << 16 | int64_t(b[2]) << 8 | int64_t(b[3]);
  };
  const int64_t magic = be32(0);
  if ((magic >> 8) != 0x08) throw std::runtime_error(path + " is not an IDX file of uint8");
  std::vector<int64_t> shape;
  for (int64_t d = 0; d < (magic & 0xff); ++d) shape.push_back(be32(4 + 4 * d));
  const size_t offset = 4 + 4 * shape.size();
  const int64_t count = c10::multiply_integers(shape);
  if (bytes.size() != offset + size_t(count)) throw std::runtime_error(path + " has the wrong size");
  return torch::from_blob(bytes.data() + offset, shape, torch::kUInt8).clone();
}

struct Split {
  torch::Tensor images;  // N x 784, float in [0, 1]
  torch::Tensor labels;  // N, int64
};

Split load(const std::string& dir, const std::string& prefix) {
  return {read_idx(dir + "/" + prefix + "-images-idx3-ubyte.gz").view({-1, 784}).to(torch::kFloat) / 255.0,
          read_idx(dir + "/" + prefix + "-labels-idx1-ubyte.gz").to(torch::kLong)};
}

// Unmodified torch::nn code: the adapter reaches it through peft-cpp's routing.
struct ClassifierImpl : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, head{nullptr};
  ClassifierImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(784, 256));
    fc2 = register_module("fc2", torch::nn::Linear(256, 128));
    head = register_module("head", torch::nn::Linear(128, 10));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(torch::relu(fc2(torch::relu(fc1(x))))); }
};
TORCH_MODULE(Classifier);

double accuracy(Classifier& model, const Split& test) {
  torch::NoGradGuard no_grad;
  model->eval();
  const auto predicted = model->forward(test.images).argmax(1);
  return predicted.eq(test.labels).to(torch::kDouble).mean().item<double>();
}

// The data-parallel job this process belongs to (none when it runs alone).
struct Job {
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  int rank = 0, world_size = 1;
  bool prints() const { return rank == 0; }
};

void progress(const char* what, int64_t done, int64_t total, double loss, double images_per_second) {
  const int width = 30;
  const int filled = static_cast<int>(width * done / std::max<int64_t>(total, 1));
  std::printf("\r%-9s [%s%s] %3d%%  loss %.4f  %7.0f img/s", what, std::string(filled, '=').c_str(),
              std::string(width - filled, ' ').c_str(), static_cast<int>(100 * done / std::max<int64_t>(total, 1)),
              loss, images_per_second);
  std::fflush(stdout);
}

// Trains `optimizer`'s tensors on `data` for `epochs`, batch 128, shuffled with a fixed seed.
void train(Classifier& model, torch::optim::Optimizer& optimizer, const Split& data, int epochs, const char* what,
           const Job& job) {
  model->train();
  if (job.group) peft::distributed::broadcast_trainable(model, *job.group);  // every rank starts from rank 0's
  const int64_t n = data.images.size(0), batch = 128;
  const int64_t steps = epochs * ((n + batch - 1) / batch);
  const auto start = std::chrono::steady_clock::now();
  int64_t step = 0, seen = 0;
  double running = 0;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    const auto order = torch::randperm(n);
    for (int64_t first = 0; first < n; first += batch, ++step) {
      const auto whole = order.slice(0, first, std::min(first + batch, n));
      if (whole.size(0) < job.world_size) continue;  // a last batch too small to give every rank a share
      // This rank's share of the batch (every world_size-th image); averaging the ranks' gradients of their means
      // gives the batch's (exactly when the shares are equal, as in all but an epoch's last batch).
      const auto index = job.group ? whole.slice(0, job.rank, whole.size(0), job.world_size) : whole;
      optimizer.zero_grad();
      const auto loss = torch::nn::functional::cross_entropy(model->forward(data.images.index_select(0, index)),
                                                             data.labels.index_select(0, index));
      loss.backward();
      if (job.group) peft::distributed::all_reduce_gradients(model, *job.group);
      optimizer.step();
      seen += whole.size(0);
      running = step == 0 ? loss.item<double>() : 0.95 * running + 0.05 * loss.item<double>();
      if (job.prints() && (step % 20 == 0 || step + 1 == steps)) {
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        progress(what, step + 1, steps, running, seen / std::max(seconds, 1e-9));
      }
    }
  }
  if (job.prints()) std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Fine-tune a LoRA adapter on Fashion-MNIST"};
  std::string data = "/usr/share/datasets/fashion-mnist", out = "fashion-mnist-lora";
  int epochs = 2, world_size = 1;
  int64_t limit = 0;
  app.add_option("--data", data, "directory of the gzipped IDX files");
  app.add_option("--out", out, "where to save the adapter (Python PEFT's layout)");
  app.add_option("--epochs", epochs, "epochs of pre-training and of fine-tuning")->check(CLI::PositiveNumber);
  app.add_option("--limit", limit, "use at most this many training images (0: all)")->check(CLI::NonNegativeNumber);
  app.add_option("--world-size", world_size, "data-parallel processes (started with peft::distributed::launch)")
      ->check(CLI::Range(1, 64));
  CLI11_PARSE(app, argc, argv);
  if (world_size > 1 && !std::getenv("RANK")) {
    // Run this same command as world_size processes; they find RANK set and join one job.
    return peft::distributed::launch(world_size, std::vector<std::string>(argv, argv + argc));
  }

  try {
    const auto start = std::chrono::steady_clock::now();
    // Every step allocates the same tensors again: keep freed ones for reuse instead of page-faulting them back in
    // from the kernel (<peft/cpu_memory_cache.h>). Made before the process group's threads start.
    peft::CpuMemoryCache cache;
    Job job;
    if (std::getenv("RANK")) {
      const auto env = peft::distributed::Environment::from_env();
      job = {peft::distributed::init_gloo(env), env.rank, env.world_size};
      torch::set_num_threads(std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / env.world_size));
    }
    torch::manual_seed(0);
    Split train_set = load(data, "train");
    const Split test = load(data, "t10k");
    if (limit > 0 && limit < train_set.images.size(0)) {
      train_set = {train_set.images.slice(0, 0, limit), train_set.labels.slice(0, 0, limit)};
    }
    const int64_t half = train_set.images.size(0) / 2;
    const auto first_half = train_set.labels.slice(0, 0, half);
    const auto known = torch::nonzero(first_half < 5).squeeze(1);
    const Split pretrain{train_set.images.index_select(0, known), first_half.index_select(0, known)};
    const Split finetune{train_set.images.slice(0, half), train_set.labels.slice(0, half)};

    Classifier model;
    torch::optim::Adam base_optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
    train(model, base_optimizer, pretrain, epochs, "pre-train", job);
    const double before = accuracy(model, test);
    if (job.prints()) std::printf("base model (classes 0-4, %lld images): test accuracy %.2f%%\n",
                static_cast<long long>(pretrain.images.size(0)), 100 * before);

    const auto config =
        peft::LoraConfig().r(8).lora_alpha(16).target_modules({"fc1", "fc2"}).modules_to_save({"head"});
    peft::inject_adapter_in_model(config, model);
    if (job.prints()) peft::print_trainable_parameters(model);
    torch::optim::AdamW optimizer(peft::trainable_tensors(model), torch::optim::AdamWOptions(2e-3));
    train(model, optimizer, finetune, epochs, "fine-tune", job);
    const double after = accuracy(model, test);
    if (job.prints()) std::printf("with the adapter (all classes, %lld images): test accuracy %.2f%%\n",
                static_cast<long long>(finetune.images.size(0)), 100 * after);

    if (job.rank == 0) peft::save_adapter(model, out);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (job.prints()) std::printf("saved the adapter to %s (adapter_config.json + adapter_model.safetensors); %.1f s in all\n",
                out.c_str(), seconds);
    return after > before ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "finetune_fashion_mnist: " << e.what() << "\n";
    return 1;
  }
}
