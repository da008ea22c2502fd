#!/usr/bin/env bash
# Installs the Debian 12 packages peft-cpp builds and tests with (needs root, or sudo).
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libtorch-dev            # LibTorch 1.13.1
  libgloo-dev             # Gloo's headers, which LibTorch's c10d ProcessGroupGloo.hpp includes (peft::distributed)
  libopenblas0-pthread    # Debian's default reference BLAS makes LibTorch matmuls ~17x slower
  nlohmann-json3-dev      # adapter_config.json, safetensors headers
  libpcre2-dev            # Python-compatible regular expressions for target_modules
  libgtest-dev libgmock-dev
  libcli11-dev            # the peft-cpp command-line tool
  zlib1g-dev dataset-fashion-mnist  # examples/finetune_fashion_mnist.cpp (gzipped IDX files)
  libbenchmark-dev        # bench/
  time                    # /usr/bin/time -v: peak memory of the merge test
  clang libclang-rt-14-dev  # sanitizer builds and libFuzzer
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
