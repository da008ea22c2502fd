#pragma once

// Python PEFT's figures from tests/data/vectors/TIMINGS.md (same machine type, torch 1.13.1, 2 threads),
// in milliseconds, for the speedup counters; and python_training.py's training steps per second.

namespace peft_bench::python_ms {

constexpr double kInject7bMetaLowCpu = 212.9;
constexpr double kInject7bMeta = 423.5;
constexpr double kInject7bCpuLowCpu = 167.6;
constexpr double kInject7bCpu = 521.9;
constexpr double kInjectSmallCpuLowCpu = 44.5;
constexpr double kInjectSmallCpu = 57.4;
constexpr double kGetStateDict7b = 16.0;
constexpr double kSetStateDict7bLowCpu = 54.0;
constexpr double kSetStateDict7b = 52.1;

}  // namespace peft_bench::python_ms

// Python PEFT's training steps per second for bench_training.cpp's models, from bench/python_training.py (reference
// environment, torch 1.13.1, same machine type), medians of the runs of 2026-12-07 21:30 - 23:35 UTC on a quiet
// machine, interleaved with the C++ benchmark. Default threads: LibTorch's own (one intra-op thread on this 2-vCPU VM
// in both runtimes; OpenBLAS one per core): 824.7, 747.8, 784.6, 908.5, 856.4 and 11.24, 10.22, 10.83, 12.05, 10.69
// steps/s. The figures recorded
// before came from the script forcing torch to 2 threads on top of OpenBLAS's 2, which oversubscribed the cores and
// made Python ~3x slower than its default (223.5 and 3.48 steps/s). OMP_NUM_THREADS=1 (one thread for torch and
// OpenBLAS): 715.0, 751.0, 723.8, 563.3 and 6.60, 6.19, 6.90, 6.33 steps/s. This VM's timings move 5-10 % between runs.
namespace peft_bench::python_steps_per_s {

constexpr double kTrainClassifier = 824.7;
constexpr double kTrainLlama = 10.83;
// OMP_NUM_THREADS=1 (bench.sh's one-thread run).
constexpr double kTrainClassifierOneThread = 719.4;
constexpr double kTrainLlamaOneThread = 6.47;

}  // namespace peft_bench::python_steps_per_s
