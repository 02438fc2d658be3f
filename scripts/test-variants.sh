#!/usr/bin/env bash
# Runs the test suite once per CPU kernel variant this machine can run: ONEDNN_MAX_CPU_ISA caps oneDNN and
# zerolora's own AVX-512 kernels together (src/kernels/cpu_info.h), so an AMX machine also runs what an AVX2-only
# CPU (Zen 3) and an AVX-512 CPU without AMX (Zen 4) would. The variants come from `zerolora --version`.
# Where AMX is one of them, it runs twice: with zerolora's AMX kernels for the frozen bf16 linears (the default)
# and with ZEROLORA_AMX_GEMM=0 (those linears through oneDNN's own AMX matmul and the bf16 attention products
# through oneDNN's bf16 matmul instead of zerolora's AMX tiles, kernels/cpu/amx_gemm.h).
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
runs=()
for v in $variants; do
  runs+=("ONEDNN_MAX_CPU_ISA=$v")
  [ "$v" = AVX512_CORE_AMX ] && runs+=("ONEDNN_MAX_CPU_ISA=$v ZEROLORA_AMX_GEMM=0")
done
status=0; summary=()
for run in "${runs[@]}"; do
  echo "== $run"
  env $run "$B/zerolora" --version | sed -n '4,7p'
  t0=$SECONDS
  if env $run ctest --test-dir "$B" --output-on-failure -j2 --timeout 900 "$@"; then r=PASS; else r=FAIL; status=1; fi
  summary+=("$r $run ($((SECONDS - t0)) s)")
done
printf '%s\n' "${summary[@]}"
exit $status
