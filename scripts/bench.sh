#!/usr/bin/env bash
# Builds the benchmarks (Release), runs them all, and rewrites the results table in bench/README.md.
# Takes about 10 minutes on 2 cores. Python PEFT's training figures come from bench/python_training.py (run it in the
# reference environment and put its numbers in bench/python_reference.h).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${BUILD_DIR:-build/bench}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPEFT_BUILD_TESTS=OFF -DPEFT_BUILD_EXAMPLES=OFF -DPEFT_BUILD_TOOLS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target peft_bench peft_bench_memory peft_bench_distributed peft_bench_cpu_memory_cache \
  peft_bench_report
out="$build/results"
mkdir -p "$out"
"$build/bench/peft_bench" --benchmark_format=json --benchmark_out="$out/bench.json" --benchmark_out_format=json 2>/dev/null >/dev/null
# The training steps again with one thread for torch and OpenBLAS (OMP_NUM_THREADS must be set before the start).
OMP_NUM_THREADS=1 "$build/bench/peft_bench" --benchmark_filter='TrainStep' --benchmark_format=json \
  --benchmark_out="$out/bench_one_thread.json" --benchmark_out_format=json 2>/dev/null >/dev/null
adapter="$out/adapter_7b.safetensors"
rm -f "$adapter"
"$build/bench/peft_bench_memory" "$adapter" >/dev/null   # writes the adapter file
"$build/bench/peft_bench_memory" "$adapter" >"$out/memory.json"
rm -f "$adapter"
"$build/bench/peft_bench_distributed" >"$out/distributed.json"
"$build/bench/peft_bench_cpu_memory_cache" >"$out/cpu_memory_cache.json"
"$build/bench/peft_bench_report" "$out/bench.json" "$out/memory.json" "$out/distributed.json" \
  "$out/bench_one_thread.json" "$out/cpu_memory_cache.json" >"$out/table.md"
# Replace the table between the markers in bench/README.md.
awk -v table="$out/table.md" '
  /<!-- results:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
  /<!-- results:end -->/ { skip = 0 }
  !skip { print }' bench/README.md >"$out/README.md"
mv "$out/README.md" bench/README.md
cat "$out/table.md"
