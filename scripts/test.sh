#!/usr/bin/env bash
# Builds peft-cpp from scratch and runs every test, in three builds:
#  1. the library optimised with GCC (the test programs at -O0: PEFT_OPTIMIZE_TESTS), the default configuration
#     (calls of torch::nn layers routed by libpeft_interpose):
#     unit tests, Python PEFT parity, examples, the peft-cpp tool, the installed package (benchmarks built,
#     not run);
#  2. with clang under AddressSanitizer + UndefinedBehaviorSanitizer and -DPEFT_INTERPOSE=OFF (drop-in layers
#     only, the portable core): the same tests, plus a short run of each fuzzer (PEFT_FUZZ_SECONDS, default 20);
#  3. with clang under ThreadSanitizer: the threading promise of <peft/lifecycle.h> (tests/test_threads.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)
# How long each stage took, in CI's log.
stage() { echo "=== $1 (at ${SECONDS} s)"; }
trap 'echo "=== done (at ${SECONDS} s)"' EXIT

build=${BUILD_DIR:-build/test}
rm -rf "$build"
stage "1. optimised build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPEFT_UNITY_BUILD=ON
cmake --build "$build" -j"$jobs"
stage "1. optimised tests"
ctest --test-dir "$build" --output-on-failure -j"$jobs"

stage "2. AddressSanitizer + UndefinedBehaviorSanitizer build"
sanitize=${SANITIZE_BUILD_DIR:-build/sanitize}
rm -rf "$sanitize"
# The benchmarks are built (not run) by the first build; timing them under sanitizers means nothing. The examples
# run only where torch::nn calls are routed (the first build).
# Line tables are all a sanitizer report needs; full debug info of LibTorch's headers only slows the build.
CC=clang CXX=clang++ cmake -S . -B "$sanitize" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" -DPEFT_UNITY_BUILD=ON -DPEFT_SANITIZE=ON -DPEFT_FUZZ=ON \
  -DPEFT_INTERPOSE=OFF -DPEFT_BUILD_EXAMPLES=OFF -DPEFT_BUILD_BENCH=OFF -DPEFT_FUZZ_SECONDS="${PEFT_FUZZ_SECONDS:-20}"
cmake --build "$sanitize" -j"$jobs"
stage "2. AddressSanitizer + UndefinedBehaviorSanitizer tests"
# Vectors/CliMerge runs the peft-cpp binary once per reference case; under the sanitizers each start costs seconds.
# The same merges run in-process here (Vectors/OfflineMerge), and the binary itself in Cli.*; stage 1 runs it all.
ctest --test-dir "$sanitize" --output-on-failure -j"$jobs" -E 'CliMerge'

stage "3. ThreadSanitizer"
tsan=${TSAN_BUILD_DIR:-build/tsan}
rm -rf "$tsan"
# One test program; everything is compiled as a unity build, which is all a ThreadSanitizer check needs.
CC=clang CXX=clang++ cmake -S . -B "$tsan" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" -DPEFT_TSAN=ON -DCMAKE_UNITY_BUILD=ON \
  -DPEFT_BUILD_TESTS=OFF -DPEFT_BUILD_EXAMPLES=OFF -DPEFT_BUILD_TOOLS=OFF -DPEFT_BUILD_BENCH=OFF
cmake --build "$tsan" -j"$jobs" --target peft_thread_tests
ctest --test-dir "$tsan" --output-on-failure
