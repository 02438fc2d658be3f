#!/bin/bash
# Third device run: the AVX-512 attention copy on Sapphire Rapids (2 cores): its test, then the profile again.
D=$(pwd)/.devcarry
L="$D/lib/ld-linux-x86-64.so.2 --library-path $D/lib"
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=2
echo "== attention tests"; timeout 60 $L $D/test_kernels --gtest_filter='*ttention*' 2>&1 | grep -E "OK|FAIL|SKIP|PASSED|Failure" | head -20
S="--preset tinyllama-1.1b --batch 1 --lora-r 8 --lora-targets q_proj,v_proj --threads 2 --profile --no-gemm"
for args in "--seq 512 --steps 2 --dtype bf16" "--seq 2048 --steps 1 --dtype bf16 --checkpointing"; do
  echo "== ours $args"; timeout 150 taskset -c 0,1 $L $D/bench_train_step $S $args 2>&1 | grep -E "step |model |time by op|peak RSS"
done
