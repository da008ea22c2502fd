#!/usr/bin/env bash
# peft-cpp merge on a multi-shard base: peak memory stays near the largest shard (measured with
# /usr/bin/time -v against the binary's own baseline), and a merge killed halfway leaves no output.
#
#   merge_memory.sh PEFT_CPP MAKE_SHARDED_CHECKPOINT
set -euo pipefail
cli=$1
generate=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$generate" "$work/base" "$work/adapter" 4 64

peak_kb() { /usr/bin/time -v "$@" 2>&1 >/dev/null | awk -F': ' '/Maximum resident set size/ {print $2}'; }
baseline=$(peak_kb "$cli" inspect "$work/adapter")
peak=$(peak_kb "$cli" merge --base "$work/base" --adapter "$work/adapter" --out "$work/merged")
[ -f "$work/merged/model.safetensors.index.json" ] || { echo "merge wrote no index"; exit 1; }
largest=$(( $(stat -c %s "$work"/base/*.safetensors | sort -n | tail -1) / 1024 ))
adapter=$(( $(stat -c %s "$work/adapter/adapter_model.safetensors") / 1024 ))
total=$(( $(du -sk "$work/base" | cut -f1) ))
extra=$(( peak - baseline ))
echo "base ${total} KB in 4 shards, largest shard ${largest} KB, adapter ${adapter} KB"
echo "peak RSS ${peak} KB, process baseline (inspect) ${baseline} KB, merge's own ${extra} KB"
limit=$(( largest * 3 / 2 + adapter + 32768 ))
if [ "$extra" -gt "$limit" ]; then
  echo "FAIL: the merge used ${extra} KB beyond the baseline, more than ${limit} KB (1.5 x largest shard + adapter + 32 MB)"
  exit 1
fi

# Killed halfway: no output directory, only the staging one.
"$cli" merge --base "$work/base" --adapter "$work/adapter" --out "$work/killed" &
pid=$!
for _ in $(seq 1 2000); do
  if compgen -G "$work/killed.partial-*/model-00001-of-00004.safetensors" >/dev/null; then break; fi
  sleep 0.005
done
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
if [ -e "$work/killed" ]; then
  echo "FAIL: an interrupted merge left $work/killed behind"
  exit 1
fi
echo "ok"
