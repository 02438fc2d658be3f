#!/bin/bash
# Device run 7: batched blocked bf16 attention with AVX-512 softmax passes; kernel tests; attention kernels by
# key chunk; the LoRA training step ours (new) / PyTorch peer / ours before this session (old), interleaved;
# T 2048 checkpointed.
D=$(pwd)/.devcarry
L="$D/lib/ld-linux-x86-64.so.2 --library-path $D/lib"
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=2
echo "== cpu"; lscpu | grep -E "Model name"; date
echo "== attention tests"
timeout 60 taskset -c 0,1 $L $D/test_kernels --gtest_filter='Attention.*:LinearBf16.*' 2>&1 | grep -E "OK|FAIL|PASSED|Failure|Expected|actual|trace" | head -40
echo "== attention kernels"
timeout 80 taskset -c 0,1 $L $D/bench_attention --benchmark_min_time=0.2 2>&1 | grep -E "BM_|bf16 attention"
S="--preset tinyllama-1.1b --seq 512 --batch 1 --lora-r 8 --lora-targets q_proj,v_proj --steps 2 --threads 2 --dtype bf16"
for i in 1 2 3; do
  echo "== new run $i"; timeout 80 taskset -c 0,1 $L $D/bench_train_step_new $S $( [ $i = 1 ] && echo --profile || echo --no-gemm ) 2>&1 | grep -E "step |model |time by op|GEMM probe|peak RSS" | tail -5
  echo "== peer run $i"; timeout 100 taskset -c 0,1 python3 bench/peer_pytorch.py $S 2>&1 | grep -E "step |peak RSS|tokens" | tail -3
  if [ $i != 3 ]; then echo "== old run $i"; timeout 80 taskset -c 0,1 $L $D/bench_train_step_old $S --no-gemm 2>&1 | grep -E "step " | tail -1; fi
done
echo "== new T2048 ckpt"; timeout 80 taskset -c 0,1 $L $D/bench_train_step_new ${S/--seq 512/--seq 2048} --steps 1 --checkpointing --no-gemm --profile 2>&1 | grep -E "step |time by op|peak RSS" | tail -3
date
