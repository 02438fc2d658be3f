#!/usr/bin/env bash
# Every GPU test and the GPU benchmark, on a machine with an NVIDIA GPU, from the binaries scripts/gpu-pack.sh
# packed elsewhere (.gpucarry/carry.tar.xz): builds nothing. Prints a summary; raw output goes to $OUT (or
# ./gpu-check-out) when that is writable. Needs the driver, cuBLASLt 13 and cuDNN 9 (a CUDA 13 toolkit or
# PyTorch's nvidia-cublas / nvidia-cudnn-cu13 wheels), and python3 with torch + transformers + peft for the peer benchmark.
#   bash scripts/gpu-check.sh [SECTION...]   sections: tests tinyllama qlora llama3-8b (default: all)
set -uo pipefail
cd "$(dirname "$0")/.."
SECTIONS=("$@")
O=${OUT:-$(pwd)/gpu-check-out}; mkdir -p "$O"
D=/tmp/zerolora-gpu; rm -rf "$D"; mkdir -p "$D"
tar -C "$D" -xJf .gpucarry/carry.tar.xz || { echo "no .gpucarry/carry.tar.xz: run scripts/gpu-pack.sh first"; exit 2; }
# PATH (the carried mpirun first), LD_LIBRARY_PATH, OPAL_PREFIX/PMIX_PREFIX, ZEROLORA_BINARY: one place for this
# script and scripts/gpu-pack-selftest.sh
. scripts/gpu-env.sh "$D"
[ -n "$GPU_ENV_CUBLAS" ] || { echo "libcublasLt.so.13 not found on this machine"; exit 2; }
[ -n "$GPU_ENV_CUDNN" ] || { echo "libcudnn.so.9 not found on this machine (the CUDA build links cuDNN 9)"; exit 2; }
summary=()
step() {  # step NAME TIMEOUT CMD...: runs, logs, records pass/fail
  local name=$1 t=$2; shift 2
  echo "== $name"; local s=$SECONDS
  timeout -k 5 "$t" "$@" > "$O/$name.log" 2>&1; local rc=$?
  tail -n 25 "$O/$name.log"
  summary+=("$(printf '%-28s rc=%-3s %4ss' "$name" "$rc" $((SECONDS - s)))")
}
echo "== machine"; nvidia-smi -L; "$D/bin/zerolora" --version 2>&1 | grep -E "^zerolora|CUDA|GPUs|Attention"; date
echo "mpirun: $(command -v mpirun || echo none) ($(mpirun --version 2>&1 | head -1))"
want_tests() { [ ${#SECTIONS[@]} -eq 0 ] || [[ " ${SECTIONS[*]} " == *" tests "* ]]; }
if want_tests; then
  step kernel-tests 60 "$D/bin/test_kernels" --gtest_filter='Cuda*'
  step model-tests 90 "$D/bin/test_model" --gtest_filter='Cuda*:Merge.OnTheGpu*'
  step train-tests 60 "$D/bin/test_train" --gtest_filter='DeviceWeightStream.*:ZeroEngineDevice.*'
  step e2e-tests 240 "$D/bin/test_e2e" --gtest_filter='CudaE2E*'
fi
# TinyLlama-1.1B shape, bf16, LoRA r 16 on all seven projections (the issue's configuration), against the peer
S="--preset tinyllama-1.1b --dtype bf16 --lora-r 16 --lora-alpha 32 --lora-targets all --steps 3"
want() { [ ${#SECTIONS[@]} -eq 0 ] || [[ " ${SECTIONS[*]} " == *" $1 "* ]]; }
if want tinyllama; then
  step bench-ours-b8-t2048 150 "$D/bin/bench_train_step" $S --batch 8 --seq 2048 --device cuda
  # the same step with zerolora's own attention kernels instead of cuDNN's fused attention
  step bench-ours-b8-t2048-nocudnn 120 env ZEROLORA_CUDNN_SDPA=0 "$D/bin/bench_train_step" $S --batch 8 --seq 2048 --device cuda --no-gemm
  step bench-peer-b8-t2048 180 python3 bench/peer_pytorch.py $S --batch 8 --seq 2048 --device cuda
  step bench-ours-b8-t2048-ckpt 120 "$D/bin/bench_train_step" $S --batch 8 --seq 2048 --device cuda --checkpointing --no-gemm
  step bench-peer-b8-t2048-ckpt 180 python3 bench/peer_pytorch.py $S --batch 8 --seq 2048 --device cuda --checkpointing
  step bench-ours-profile 100 "$D/bin/bench_train_step" $S --batch 8 --seq 2048 --device cuda --no-gemm --profile --steps 1
  # the LoRA branch alone at the step's shapes: cuBLASLt heuristic vs split-K, dropout paths unfused vs fused
  step bench-lora-gemms 30 "$D/bin/bench_cuda_lora_gemms" --rows 16384 --r 16
fi
if want qlora; then  # QLoRA (NF4 projections) next to bf16 LoRA, same shape
  step bench-ours-nf4-b8-t2048 150 "$D/bin/bench_train_step" ${S/--dtype bf16/--dtype nf4} --batch 8 --seq 2048 --device cuda --no-gemm
fi
if want llama3-8b; then  # Llama-3-8B shape, bf16 (the peer's fp32 model build alone takes minutes there: not run)
  S8="--preset llama3-8b --dtype bf16 --lora-r 16 --lora-alpha 32 --lora-targets all --steps 2"
  step bench-ours-8b-b1-t2048 150 "$D/bin/bench_train_step" $S8 --batch 1 --seq 2048 --device cuda --no-gemm
  step bench-ours-8b-b4-t2048-ckpt 150 "$D/bin/bench_train_step" $S8 --batch 4 --seq 2048 --device cuda --checkpointing --no-gemm
  # DeepSpeed's offload_param: the frozen 8B weights in host memory, streamed to the GPU part by part
  step bench-ours-8b-b1-t2048-offload 150 "$D/bin/bench_train_step" $S8 --batch 1 --seq 2048 --device cuda --no-gemm --offload-param
fi
echo "== summary"; printf '%s\n' "${summary[@]}" | tee "$O/summary.txt"
