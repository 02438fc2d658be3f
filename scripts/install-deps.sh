#!/usr/bin/env bash
# Installs everything zerolora needs to build and test on a fresh Debian 12 machine.
# Idempotent: skips apt-get when every package is already installed.
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config
      libdnnl-dev ocl-icd-opencl-dev libopenmpi-dev openmpi-bin nlohmann-json3-dev
      libsentencepiece-dev libgtest-dev libgmock-dev libbenchmark-dev
      clang libclang-rt-14-dev libomp-14-dev  # clang: the libFuzzer targets (scripts/fuzz.sh)
      unzip)  # scripts/fetch-cudnn-frontend.sh (CUDA builds)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
