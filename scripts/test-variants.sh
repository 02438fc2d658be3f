#!/usr/bin/env bash
# Runs the test suite once per CPU kernel variant this machine can run: ONEDNN_MAX_CPU_ISA caps oneDNN and
# zerolora's own AVX-512 kernels together (src/kernels/cpu_info.h), so an AMX machine also runs what an AVX2-only
# CPU (Zen 3) and an AVX-512 CPU without AMX (Zen 4) would. The variants come from `zerolora --version`.
#   bash scripts/test-variants.sh [BUILD_DIR [CTEST_ARGS...]]     default: build, the whole suite
#   e.g. bash scripts/test-variants.sh build -R 'ZeroMpi|Kernels|Attention'
# Builds (BUILD_DIR, Release) if needed; prints one PASS/FAIL line per variant; fails if any variant failed.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}; shift || true
if [ ! -x "$B/zerolora" ]; then
  bash scripts/install-deps.sh
  cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
fi
ninja -C "$B" -j2
variants=$("$B/zerolora" --version | sed -n 's/.*kernel variants this CPU can run (ONEDNN_MAX_CPU_ISA=...): //p' | tr -d ',')
echo "kernel variants on this CPU: $variants"
status=0; summary=()
for v in $variants; do
  echo "== ONEDNN_MAX_CPU_ISA=$v"
  ONEDNN_MAX_CPU_ISA=$v "$B/zerolora" --version | sed -n '4,7p'
  t0=$SECONDS
  if ONEDNN_MAX_CPU_ISA=$v ctest --test-dir "$B" --output-on-failure -j2 --timeout 900 "$@"; then r=PASS; else r=FAIL; status=1; fi
  summary+=("$r ONEDNN_MAX_CPU_ISA=$v ($((SECONDS - t0)) s)")
done
printf '%s\n' "${summary[@]}"
exit $status
