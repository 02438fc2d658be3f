#!/bin/bash
# Second device run: where a step's time goes on Sapphire Rapids (2 cores), bf16 and NF4, seq 512 and 2048.
D=$(pwd)/.devcarry
L="$D/lib/ld-linux-x86-64.so.2 --library-path $D/lib"
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=2
S="--preset tinyllama-1.1b --batch 1 --lora-r 8 --lora-targets q_proj,v_proj --threads 2 --profile --no-gemm"
for args in "--seq 512 --steps 2 --dtype bf16" "--seq 512 --steps 1 --dtype nf4" "--seq 2048 --steps 1 --dtype bf16 --checkpointing" "--seq 512 --steps 1 --dtype bf16 --lora-targets all --lora-r 16 --checkpointing"; do
  echo "== ours $args"; timeout 150 taskset -c 0,1 $L $D/bench_train_step $S $args 2>&1 | grep -E "step |model |time by op|peak RSS"
done
