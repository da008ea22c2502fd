// peft-cpp: inspect, merge and convert Python PEFT adapters without writing code; launch data-parallel training.
// Exit codes: 0 ok, 1 bad input (with one line saying what), 2 internal error.

#include <malloc.h>

#include <iostream>

#include <CLI/CLI.hpp>

#include <peft/distributed.h>
#include <peft/error.h>

#include "commands.h"
#include "files.h"

int main(int argc, char** argv) {
  // Large buffers (whole weights, deltas) straight from and back to the OS: glibc would otherwise raise its
  // mmap threshold after the first free and keep every later one in the heap, so peak memory would grow
  // with each shard.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  CLI::App app{"peft-cpp: inspect, merge and convert Hugging Face PEFT adapters (adapter_config.json + "
               "adapter_model.safetensors)."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "peft-cpp 0.1.0");

  peft_cli::InspectOptions inspect_options;
  auto* inspect = app.add_subcommand("inspect", "Show what an adapter holds: method, ranks and alphas per module, "
                                                "targets, dtypes, parameter count, warnings.");
  inspect->add_option("adapter", inspect_options.adapter, "adapter directory or .safetensors file")->required();
  inspect->add_flag("--json", inspect_options.json, "machine-readable output");

  peft_cli::MergeOptions merge_options;
  auto* merge = app.add_subcommand("merge", "Merge adapters into a base checkpoint (W += scale * dW), one shard at a "
                                            "time, keeping the sharding.");
  merge->add_option("--base", merge_options.base, "base .safetensors file, a directory with its index, or a TorchScript model (.pt)")->required();
  merge->add_option("--adapter", merge_options.adapters, "adapter directory (repeat for several)")->required();
  merge->add_option("--scale", merge_options.scales, "scale of the matching --adapter (default 1)");
  merge->add_option("--out", merge_options.out, "output file or directory (must not exist)")->required();
  merge->add_option("--dtype", merge_options.dtype, "write floating tensors as bf16, f16 or f32");

  peft_cli::ConvertOptions convert_options;
  auto* convert = app.add_subcommand("convert", "Rewrite an adapter in Python PEFT's key layout and/or another dtype.");
  convert->add_option("adapter", convert_options.adapter, "adapter directory")->required();
  convert->add_option("--out", convert_options.out, "output directory (must not exist)")->required();
  convert->add_option("--dtype", convert_options.dtype, "bf16, f16 or f32");
  convert->add_option("--adapter-name", convert_options.adapter_name, "adapter name to strip from inject-style keys")
      ->capture_default_str();

  std::string demo_dir = (std::filesystem::temp_directory_path() / "peft-cpp-demo").string();
  auto* demo = app.add_subcommand("demo", "The adapter-injection guide's walk-through, then inspect and merge on its files.");
  demo->add_option("--out", demo_dir, "working directory (recreated)")->capture_default_str();

  int nproc = 1, master_port = 0;
  std::string master_addr = "127.0.0.1";
  std::vector<std::string> command;
  auto* launch = app.add_subcommand("launch", "Run a training program as N local processes of one torch.distributed "
                                              "job (torchrun's variables); if one fails, stop the others.");
  launch->add_option("-n,--nproc", nproc, "number of processes")->check(CLI::Range(1, 1024))->capture_default_str();
  launch->add_option("--master-port", master_port, "rendezvous port (0: a free one)")->capture_default_str();
  launch->add_option("--master-addr", master_addr, "rendezvous address")->capture_default_str();
  launch->add_option("command", command, "-- PROGRAM ARGS...")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 1;
  }
  try {
    if (*inspect) peft_cli::inspect(inspect_options, std::cout);
    if (*merge) peft_cli::merge(merge_options, std::cout);
    if (*convert) peft_cli::convert(convert_options, std::cout);
    if (*demo) return peft_cli::demo(demo_dir, std::cout);
    if (*launch) return peft::distributed::launch(nproc, command, master_port, master_addr);
    return 0;
  } catch (const peft::Error& e) {
    std::cerr << "peft-cpp: error: " << e.what() << "\n";
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    std::cerr << "peft-cpp: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "peft-cpp: internal error: " << e.what() << "\n";
    return 2;
  }
}
