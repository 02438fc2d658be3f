#!/bin/bash
# Fourth device run: the vectorised dropout mask on Sapphire Rapids (2 cores), LoRA-heavy workload.
D=$(pwd)/.devcarry
L="$D/lib/ld-linux-x86-64.so.2 --library-path $D/lib"
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=2
S="--preset tinyllama-1.1b --batch 1 --threads 2 --profile --no-gemm"
echo "== ours --seq 512 --steps 1 --dtype bf16 --lora-targets all --lora-r 16 --checkpointing"
timeout 100 taskset -c 0,1 $L $D/bench_train_step $S --seq 512 --steps 1 --dtype bf16 --lora-targets all --lora-r 16 --checkpointing 2>&1 | grep -E "step |model |time by op|peak RSS"
