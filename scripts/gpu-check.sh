#!/usr/bin/env bash
# Every GPU test and the GPU benchmark, on a machine with an NVIDIA GPU, from the binaries scripts/gpu-pack.sh
# packed elsewhere (.gpucarry/carry.tar.xz): builds nothing. Prints a summary; raw output goes to $OUT (or
# ./gpu-check-out) when that is writable. Needs the driver, cuBLASLt 13 (a CUDA 13 toolkit or PyTorch's
# nvidia-cublas wheel), and python3 with torch + transformers + peft for the peer benchmark.
#   bash scripts/gpu-check.sh [--quick]     (--quick: tests and one short benchmark only)
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
O=${OUT:-$(pwd)/gpu-check-out}; mkdir -p "$O"
D=/tmp/zerolora-gpu; rm -rf "$D"; mkdir -p "$D"
tar -C "$D" -xJf .gpucarry/carry.tar.xz || { echo "no .gpucarry/carry.tar.xz: run scripts/gpu-pack.sh first"; exit 2; }
cublas=$(find /usr/local /opt /usr/lib -xdev \( -name 'libcublasLt.so.13' -o -name 'libcublasLt.so.13.*' \) -not -path '/proc/*' 2>/dev/null | head -1)
[ -n "$cublas" ] || { echo "libcublasLt.so.13 not found on this machine"; exit 2; }
export LD_LIBRARY_PATH="$D/lib:$(dirname "$cublas"):${LD_LIBRARY_PATH:-}"
export ZEROLORA_BINARY="$D/bin/zerolora" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
summary=()
step() {  # step NAME TIMEOUT CMD...: runs, logs, records pass/fail
  local name=$1 t=$2; shift 2
  echo "== $name"; local s=$SECONDS
  timeout -k 5 "$t" "$@" > "$O/$name.log" 2>&1; local rc=$?
  tail -n 25 "$O/$name.log"
  summary+=("$(printf '%-28s rc=%-3s %4ss' "$name" "$rc" $((SECONDS - s)))")
}
echo "== machine"; nvidia-smi -L; "$D/bin/zerolora" --version 2>/dev/null | head -5; date
step kernel-tests 60 "$D/bin/test_kernels" --gtest_filter='Cuda*'
step model-tests 90 "$D/bin/test_model" --gtest_filter='CudaModel*'
step e2e-tests 150 "$D/bin/test_e2e" --gtest_filter='CudaE2E*'
# TinyLlama-1.1B shape, bf16, LoRA r 16 on all seven projections (the issue's configuration)
S="--preset tinyllama-1.1b --dtype bf16 --lora-r 16 --lora-alpha 32 --lora-targets all --steps 3"
if [ $QUICK = 1 ]; then
  step bench-ours-b1-t512 120 "$D/bin/bench_train_step" $S --batch 1 --seq 512 --device cuda --profile
else
  step bench-ours-b8-t2048 150 "$D/bin/bench_train_step" $S --batch 8 --seq 2048 --device cuda
  step bench-peer-b8-t2048 180 python3 bench/peer_pytorch.py $S --batch 8 --seq 2048 --device cuda
  step bench-ours-b8-t2048-ckpt 120 "$D/bin/bench_train_step" $S --batch 8 --seq 2048 --device cuda --checkpointing --no-gemm
  step bench-peer-b8-t2048-ckpt 180 python3 bench/peer_pytorch.py $S --batch 8 --seq 2048 --device cuda --checkpointing
  step bench-ours-profile 100 "$D/bin/bench_train_step" $S --batch 8 --seq 2048 --device cuda --no-gemm --profile --steps 1
fi
echo "== summary"; printf '%s\n' "${summary[@]}" | tee "$O/summary.txt"
