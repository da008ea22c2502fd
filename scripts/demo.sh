#!/usr/bin/env bash
# Builds peft-cpp and runs `peft-cpp demo`: the adapter-injection guide's walk-through on its example model,
# then the command-line tool's inspect and merge on the files it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${BUILD_DIR:-build/demo}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPEFT_UNITY_BUILD=ON -DPEFT_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target peft-cpp
"$build/tools/peft-cpp" demo --out "$build/demo-output"
