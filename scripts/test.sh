#!/usr/bin/env bash
# Builds peft-cpp from scratch and runs every test: once optimised with GCC (unit tests, Python PEFT parity,
# examples, the peft-cpp tool, the installed package; the benchmarks are built, not run), once with clang under AddressSanitizer + UndefinedBehaviorSanitizer
# (the same tests, plus a short run of each fuzzer; PEFT_FUZZ_SECONDS sets how long, default 45).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)

build=${BUILD_DIR:-build/test}
rm -rf "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j"$jobs"
ctest --test-dir "$build" --output-on-failure -j"$jobs"

sanitize=${SANITIZE_BUILD_DIR:-build/sanitize}
rm -rf "$sanitize"
# The benchmarks are built (not run) by the first build; timing them under sanitizers means nothing.
CC=clang CXX=clang++ cmake -S . -B "$sanitize" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPEFT_SANITIZE=ON -DPEFT_FUZZ=ON \
  -DPEFT_BUILD_EXAMPLES=ON -DPEFT_BUILD_BENCH=OFF -DPEFT_FUZZ_SECONDS="${PEFT_FUZZ_SECONDS:-45}"
cmake --build "$sanitize" -j"$jobs"
ctest --test-dir "$sanitize" --output-on-failure -j"$jobs"
