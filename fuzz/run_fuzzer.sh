#!/usr/bin/env bash
# run_fuzzer.sh FUZZER VECTORS_DIR SEED_GLOB CORPUS_DIR SECONDS [REGRESSIONS_DIR]
# Seeds CORPUS_DIR from the reference vectors and from inputs that once failed (kept between runs, so it
# grows), then fuzzes for SECONDS.
# Long runs: fuzz/run_fuzzer.sh build/sanitize/fuzz/safetensors_fuzzer tests/data/vectors "*.safetensors" corpus 3600
set -euo pipefail
fuzzer=$1 vectors=$2 glob=$3 corpus=$4 seconds=$5 regressions=${6:-}
mkdir -p "$corpus"
find "$vectors" -name "$glob" -type f | while read -r f; do
  cp "$f" "$corpus/seed-$(echo "$f" | md5sum | cut -c1-16)"
done
if [ -n "$regressions" ] && [ -d "$regressions" ]; then
  cp "$regressions"/* "$corpus"/ 2>/dev/null || true
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-}
exec "$fuzzer" -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=65536 -timeout=10 -print_final_stats=1 "$corpus"
