#!/usr/bin/env bash
# Builds peft-cpp and runs the adapter-injection guide's walk-through (examples/guide_walkthrough.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${BUILD_DIR:-build/demo}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPEFT_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target guide_walkthrough
"$build/examples/guide_walkthrough" "$build/demo-output"
