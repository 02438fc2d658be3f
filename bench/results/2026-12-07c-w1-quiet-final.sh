#!/bin/bash
# W1 (TinyLlama-1.1B shape, bf16, seq 512, batch 1, LoRA q,v r 8, 2 threads) at the end of the 2026-12-07 (b)
# session, on the quiet 2-core Sapphire Rapids VM: ours at HEAD (AMX linears + AMX attention products) with the
# default OpenMP wait policy and with OMP_WAIT_POLICY=passive, and the PyTorch 2.4.1 peer
# (torch + transformers 4.44.2 + peft 0.12.0 from /opt/zerolora-refdeps, bf16 autocast over fp32 base weights),
# interleaved, two rounds.
cd /work/main
B=build-b/bench/bench_train_step
echo "# $(date -u) $(uptime); commit $(git rev-parse --short HEAD)"
for i in 1 2; do
  for wp in default passive; do
    echo "## run $i ours OMP_WAIT_POLICY=$wp load: $(cut -d' ' -f1-3 /proc/loadavg)"
    if [ $wp = passive ]; then export OMP_WAIT_POLICY=passive; else unset OMP_WAIT_POLICY; fi
    $B --preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 --lora_r 8 --lora_targets q_proj,v_proj --steps 3 --profile true 2>&1
    unset OMP_WAIT_POLICY
  done
  echo "## run $i peer load: $(cut -d' ' -f1-3 /proc/loadavg)"
  OMP_NUM_THREADS=2 PYTHONPATH=/opt/zerolora-refdeps timeout 900 python3 bench/peer_pytorch.py --preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 --lora-r 8 --lora-targets q_proj,v_proj --steps 3 --threads 2 2>&1 | grep -v Warning
done
echo "# end $(date -u) $(uptime)"
