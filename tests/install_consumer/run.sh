#!/usr/bin/env bash
# Installs the build tree into a prefix of its own (not on the loader's path), then checks that what was
# installed runs there without LD_LIBRARY_PATH: the peft-cpp tool (inspect on a reference adapter), and a
# downstream project that finds peft with find_package, links peft::peft and runs.
#   run.sh BUILD_DIR CONSUMER_SOURCE WORK_DIR ADAPTER_DIR
set -euo pipefail
build=$1 source=$2 work=$3 adapter=$4
rm -rf "$work"
prefix="$work/prefix with space"
cmake --install "$build" --prefix "$prefix" >/dev/null
unset LD_LIBRARY_PATH

"$prefix/bin/peft-cpp" --help >/dev/null
"$prefix/bin/peft-cpp" inspect "$adapter" | grep -q "method:      LORA" || {
  echo "installed peft-cpp inspect did not report the adapter" >&2
  exit 1
}

cmake -S "$source" -B "$work/build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/build" >/dev/null
"$work/build/consumer"
echo "installed tool and find_package consumer ran from $prefix"
