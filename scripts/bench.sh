#!/usr/bin/env bash
# Builds the benchmarks (Release), runs all six, and rewrites the results table in bench/README.md.
# Takes about 8 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${BUILD_DIR:-build/bench}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPEFT_BUILD_TESTS=OFF -DPEFT_BUILD_EXAMPLES=OFF -DPEFT_BUILD_TOOLS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target peft_bench peft_bench_memory peft_bench_report
out="$build/results"
mkdir -p "$out"
"$build/bench/peft_bench" --benchmark_format=json --benchmark_out="$out/bench.json" --benchmark_out_format=json 2>/dev/null >/dev/null
adapter="$out/adapter_7b.safetensors"
rm -f "$adapter"
"$build/bench/peft_bench_memory" "$adapter" >/dev/null   # writes the adapter file
"$build/bench/peft_bench_memory" "$adapter" >"$out/memory.json"
rm -f "$adapter"
"$build/bench/peft_bench_report" "$out/bench.json" "$out/memory.json" >"$out/table.md"
# Replace the table between the markers in bench/README.md.
awk -v table="$out/table.md" '
  /<!-- results:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
  /<!-- results:end -->/ { skip = 0 }
  !skip { print }' bench/README.md >"$out/README.md"
mv "$out/README.md" bench/README.md
cat "$out/table.md"
