#!/usr/bin/env bash
# Installs the dependencies, builds everything and runs the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
ninja -C build -j2
ctest --test-dir build --output-on-failure -j2 --timeout 900
