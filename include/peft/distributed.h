#pragma once

// Data-parallel training of adapters over LibTorch's own distributed engine (c10d).
//
//   auto env = peft::distributed::Environment::from_env();     // torchrun's RANK, WORLD_SIZE, MASTER_ADDR, ...
//   auto group = peft::distributed::init_gloo(env);             // or any c10d::ProcessGroup (NCCL, MPI)
//   peft::inject_adapter_in_model(config, model);
//   peft::distributed::broadcast_trainable(model, *group);      // every rank starts from rank 0's adapter
//   for (...) {                                                  // each rank: its own shard of the batch
//     loss.backward();
//     peft::distributed::all_reduce_gradients(model, *group);   // average of the adapter gradients only
//     optimizer.step(); optimizer.zero_grad();
//   }
//
// Only tensors that require grad travel (a LoRA adapter is a fraction of a percent of the model), flattened
// into buckets so that a few large all-reduces replace many small ones. Start the processes with
// `peft-cpp launch -n N -- ./trainer args...` (or torchrun): it sets the variables below.

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include <peft/export.h>
#include <peft/module_ref.h>

namespace peft::distributed {

struct PEFT_API Environment {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;

  /// Reads RANK, WORLD_SIZE, LOCAL_RANK (default RANK), MASTER_ADDR and MASTER_PORT as torchrun sets them;
  /// peft::ConfigError naming the variable when one is missing or malformed.
  static Environment from_env();
};

/// A Gloo process group: rank 0 hosts the rendezvous (c10d::TCPStore at master_addr:master_port), every
/// collective fails with an error after `timeout` instead of waiting for a rank that died.
PEFT_API c10::intrusive_ptr<c10d::ProcessGroup> init_gloo(const Environment& env,
                                                          std::chrono::milliseconds timeout = std::chrono::seconds(60));

/// Copies rank 0's trainable tensors (peft::trainable_tensors) to every rank: one broadcast per bucket.
PEFT_API void broadcast_trainable(ModuleRef model, c10d::ProcessGroup& group, size_t bucket_bytes = 25u << 20);

/// Replaces each trainable tensor's gradient by its average over the ranks, in buckets of at most
/// `bucket_bytes` (a tensor larger than that travels alone). A trainable tensor without a gradient on this rank
/// counts as zeros, so ranks stay in step.
PEFT_API void all_reduce_gradients(ModuleRef model, c10d::ProcessGroup& group, size_t bucket_bytes = 25u << 20);

/// Runs `command` (program and arguments, looked up in PATH) as `nproc` local processes with torchrun's
/// variables set (RANK = LOCAL_RANK = 0..nproc-1, WORLD_SIZE = LOCAL_WORLD_SIZE = nproc, MASTER_ADDR =
/// `master_addr`, MASTER_PORT = `master_port`, or a free port when 0; and, as torchrun does, OMP_NUM_THREADS = 1
/// when nproc > 1 and it is not set, with a warning). SIGINT and SIGTERM are passed on to
/// the processes. When one fails (non-zero exit or a signal), the others are terminated at once (SIGTERM, then
/// SIGKILL after 5 s), so a crashed rank never leaves the others waiting. Returns 0 when all succeed, else the
/// first failure's exit code (128 + signal number for a signal).
PEFT_API int launch(int nproc, const std::vector<std::string>& command, int master_port = 0,
                    const std::string& master_addr = "127.0.0.1");

}  // namespace peft::distributed
