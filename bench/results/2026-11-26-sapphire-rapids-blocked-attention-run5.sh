#!/bin/bash
# Device run 5: blocked bf16 attention (oneDNN AMX) on Sapphire Rapids, 2 cores: kernel tests, attention
# kernels side by side, and the LoRA training step before (HEAD: flash fp32 attention) / after / PyTorch peer,
# interleaved.
D=$(pwd)/.devcarry
L="$D/lib/ld-linux-x86-64.so.2 --library-path $D/lib"
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=2
echo "== cpu"; lscpu | grep -E "Model name" ; grep -o -w -E "amx_bf16|avx512_bf16" /proc/cpuinfo | sort | uniq -c
echo "== attention + bf16 kernel tests"
timeout 100 taskset -c 0,1 $L $D/test_kernels --gtest_filter='Attention.*:LinearBf16.*' 2>&1 | grep -E "OK|FAIL|SKIP|PASSED|Failure|Expected|actual|which is|product|trace|T=" | head -60
echo "== attention kernels"
timeout 150 taskset -c 0,1 $L $D/bench_attention --benchmark_min_time=0.2 2>&1 | grep -E "BM_|ran on" 
S="--preset tinyllama-1.1b --seq 512 --batch 1 --lora-r 8 --lora-targets q_proj,v_proj --steps 2 --threads 2 --dtype bf16"
for i in 1 2; do
  echo "== new run $i"; timeout 120 taskset -c 0,1 $L $D/bench_train_step_new $S --profile $( [ $i = 2 ] && echo --no-gemm ) 2>&1 | grep -E "step |model |time by op|MFU|tok|GFLOP" | tail -8
  echo "== old run $i"; timeout 120 taskset -c 0,1 $L $D/bench_train_step_old $S --no-gemm 2>&1 | tail -2
  if [ $i = 1 ]; then echo "== peer run $i"; timeout 150 taskset -c 0,1 python3 bench/peer_pytorch.py $S 2>&1 | tail -2; fi
done
echo "== new T2048 ckpt"; timeout 150 taskset -c 0,1 $L $D/bench_train_step_new ${S/--seq 512/--seq 2048} --steps 1 --checkpointing --no-gemm --profile 2>&1 | grep -E "step |model |time by op|tok" | tail -8
