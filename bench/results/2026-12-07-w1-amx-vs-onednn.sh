#!/bin/bash
# W1 (TinyLlama-1.1B shape, bf16, seq 512, batch 1, LoRA q,v r 8): AMX kernels vs oneDNN 2.6 (ZEROLORA_AMX_GEMM=0),
# interleaved, one process per run.
B=/work/main/build-b/bench/bench_train_step
echo "# $(date -u) $(uptime)"
echo "# $(lscpu | grep 'Model name')"
for i in 1 2 3; do
  for v in 0 1; do
    echo "## run $i ZEROLORA_AMX_GEMM=$v load: $(cut -d' ' -f1-3 /proc/loadavg)"
    ZEROLORA_AMX_GEMM=$v $B --preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 --lora_r 8 --lora_targets q_proj,v_proj --steps 3 --profile true 2>&1
  done
done
echo "# end $(date -u) $(uptime)"
