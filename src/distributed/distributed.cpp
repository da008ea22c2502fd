#include <peft/distributed.h>

#include <cstdlib>

#include <ATen/ops/cat.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <peft/error.h>
#include <peft/training.h>

namespace peft::distributed {
namespace {

int int_variable(const char* name, const char* fallback, int min) {
  const char* text = std::getenv(name);
  if (!text) text = fallback;
  if (!text) {
    throw ConfigError(std::string("The environment variable ") + name +
                      " is not set; start the processes with `peft-cpp launch -n N -- ...` or torchrun.");
  }
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value < min || value > 1 << 30) {
    throw ConfigError(std::string("The environment variable ") + name + "='" + text + "' is not a valid value.");
  }
  return static_cast<int>(value);
}

// Groups tensors into runs of at most `bucket_bytes` of one dtype and device.
std::vector<std::vector<at::Tensor>> buckets(const std::vector<at::Tensor>& tensors, size_t bucket_bytes) {
  std::vector<std::vector<at::Tensor>> out;
  size_t bytes = 0;
  for (const at::Tensor& t : tensors) {
    const size_t size = t.numel() * t.element_size();
    const bool fits = !out.empty() && bytes + size <= bucket_bytes && out.back().front().scalar_type() == t.scalar_type() &&
                      out.back().front().device() == t.device();
    if (!fits) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(t);
    bytes += size;
  }
  return out;
}

at::Tensor flatten(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> flat;
  flat.reserve(tensors.size());
  for (const at::Tensor& t : tensors) flat.push_back(t.reshape({-1}));
  return at::cat(flat);
}

void unflatten_into(const at::Tensor& flat, const std::vector<at::Tensor>& tensors) {
  int64_t offset = 0;
  for (const at::Tensor& t : tensors) {
    t.copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

void check_group(const c10d::ProcessGroup& group) {
  TORCH_CHECK(group.getSize() >= 1, "peft::distributed: the process group has no ranks");
}

}  // namespace

Environment Environment::from_env() {
  Environment env;
  env.world_size = int_variable("WORLD_SIZE", nullptr, 1);
  env.rank = int_variable("RANK", nullptr, 0);
  if (env.rank >= env.world_size) {
    throw ConfigError("RANK=" + std::to_string(env.rank) + " is not below WORLD_SIZE=" + std::to_string(env.world_size) +
                      ".");
  }
  env.local_rank = int_variable("LOCAL_RANK", std::getenv("RANK"), 0);
  if (const char* addr = std::getenv("MASTER_ADDR")) env.master_addr = addr;
  if (env.master_addr.empty()) throw ConfigError("The environment variable MASTER_ADDR is empty.");
  env.master_port = int_variable("MASTER_PORT", "29500", 1);
  if (env.master_port > 65535) throw ConfigError("MASTER_PORT=" + std::to_string(env.master_port) + " is not a port.");
  return env;
}

c10::intrusive_ptr<c10d::ProcessGroup> init_gloo(const Environment& env, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(env.master_port);
  store_options.isServer = env.rank == 0;
  store_options.numWorkers = env.world_size;
  store_options.timeout = timeout;
  auto store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
  auto options = c10d::ProcessGroupGloo::Options::create();
  options->timeout = timeout;
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(env.master_addr == "localhost" ? "127.0.0.1" : env.master_addr));
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, options);
}

void broadcast_trainable(ModuleRef model, c10d::ProcessGroup& group, size_t bucket_bytes) {
  check_group(group);
  const std::vector<at::Tensor> tensors = trainable_tensors(model);
  at::NoGradGuard no_grad;
  for (const auto& bucket : buckets(tensors, bucket_bytes)) {
    std::vector<at::Tensor> flat{flatten(bucket)};
    c10d::BroadcastOptions options;
    options.rootRank = 0;
    group.broadcast(flat, options)->wait();
    unflatten_into(flat.front(), bucket);
  }
}

void all_reduce_gradients(ModuleRef model, c10d::ProcessGroup& group, size_t bucket_bytes) {
  check_group(group);
  std::vector<at::Tensor> grads;
  for (const at::Tensor& t : trainable_tensors(model)) {
    if (!t.grad().defined()) t.mutable_grad() = at::zeros_like(t);
    grads.push_back(t.grad());
  }
  at::NoGradGuard no_grad;
  const double scale = 1.0 / group.getSize();
  for (const auto& bucket : buckets(grads, bucket_bytes)) {
    std::vector<at::Tensor> flat{flatten(bucket)};
    group.allreduce(flat)->wait();
    flat.front().mul_(scale);
    unflatten_into(flat.front(), bucket);
  }
}

}  // namespace peft::distributed
