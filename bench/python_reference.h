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
// environment, torch 1.13.1, same machine type): medians of the runs of 2026-12-08 00:59 - 01:41 UTC, each
// interleaved with a run of the C++ benchmark on an otherwise idle machine (bench/README.md, "Training").
// Default threads (LibTorch's own: one intra-op thread on this 2-vCPU VM in both runtimes; OpenBLAS one per core):
// 546.4, 565.8, 762.6, 797.0, 781.6, 634.5, 780.3 and 8.81, 10.19, 9.87, 11.20, 8.66, 9.32, 8.42 steps/s.
// OMP_NUM_THREADS=1 (one thread for torch and OpenBLAS): 722.8, 791.4, 654.9 and 6.97, 7.22, 6.44 steps/s.
// The previous session's figures (2026-12-07, also interleaved) were 824.7 / 10.83 and 719.4 / 6.47: this VM's
// timings move 5-20 % between runs and between days, hence a comparison within one session.
namespace peft_bench::python_steps_per_s {

constexpr double kTrainClassifier = 762.6;
constexpr double kTrainLlama = 9.32;
// OMP_NUM_THREADS=1 (bench.sh's one-thread run).
constexpr double kTrainClassifierOneThread = 722.8;
constexpr double kTrainLlamaOneThread = 6.97;

}  // namespace peft_bench::python_steps_per_s
