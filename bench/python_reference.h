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
// environment, torch 1.13.1, same machine type, default threads = 2); last run 2026-12-07 16:25 UTC on a quiet
// machine, minutes after the C++ benchmark (TrainStepLlama at one thread: 7.17 - 7.63 steps/s, 1.09x - 1.16x these
// 6.58). With OMP_NUM_THREADS=1 (one thread for torch and OpenBLAS) the same script gave 734.7 and 6.58 steps/s.
// This VM's 2-thread timings vary 1.5-3x between runs (bench/README.md).
namespace peft_bench::python_steps_per_s {

constexpr double kTrainClassifier = 223.5;
constexpr double kTrainLlama = 3.48;
// OMP_NUM_THREADS=1 (bench.sh's one-thread run).
constexpr double kTrainClassifierOneThread = 734.7;
constexpr double kTrainLlamaOneThread = 6.58;

}  // namespace peft_bench::python_steps_per_s
