#!/bin/bash
# Device run 6: blocked bf16 attention with 512-key chunks (online softmax) vs without (v1) vs flash fp32;
# training step new vs HEAD interleaved; T 2048 checkpointed.
D=$(pwd)/.devcarry
L="$D/lib/ld-linux-x86-64.so.2 --library-path $D/lib"
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=2
echo "== attention tests"
timeout 60 taskset -c 0,1 $L $D/test_kernels --gtest_filter='Attention.*' 2>&1 | grep -E "FAIL|PASSED|Failure|Expected|actual" | head -20
echo "== attention kernels: v1 (whole key range per product)"
timeout 60 taskset -c 0,1 $L $D/bench_attention_v1 --benchmark_min_time=0.2 --benchmark_filter='blocked_bf16|flash' 2>&1 | grep -E "BM_"
echo "== attention kernels: v2 (512-key chunks)"
timeout 60 taskset -c 0,1 $L $D/bench_attention --benchmark_min_time=0.2 --benchmark_filter='blocked_bf16' 2>&1 | grep -E "BM_|bf16 attention"
S="--preset tinyllama-1.1b --seq 512 --batch 1 --lora-r 8 --lora-targets q_proj,v_proj --steps 2 --threads 2 --dtype bf16 --no-gemm"
for i in 1 2; do
  echo "== new run $i"; timeout 100 taskset -c 0,1 $L $D/bench_train_step_new $S --profile 2>&1 | grep -E "step |time by op" | tail -3
  echo "== old run $i"; timeout 100 taskset -c 0,1 $L $D/bench_train_step_old $S --profile 2>&1 | grep -E "step |time by op" | tail -3
done
echo "== new T2048 ckpt"; timeout 100 taskset -c 0,1 $L $D/bench_train_step_new ${S/--seq 512/--seq 2048} --steps 1 --checkpointing --profile 2>&1 | grep -E "step |time by op" | tail -3
