#!/usr/bin/env bash
# The README's main job: installs, builds, then makes a small random model and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
ninja -C build -j2 zerolora
out="${1:-/tmp/zerolora-main-job}"
./build/zerolora init-model --preset small --out "$out/model"
./build/zerolora inspect "$out/model"
./build/zerolora forward "$out/model" --ids 1,5,9,13,17,21,25,29
