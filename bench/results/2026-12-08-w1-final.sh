#!/bin/bash
# W1 (TinyLlama-1.1B shape, bf16, seq 512, batch 1, LoRA q,v r 8, 2 threads) at the end of the 2026-12-08 session
# (the attention's AVX-512 row passes, the 16-lane dropout mask), on the 2-core Sapphire Rapids VM: ours at HEAD and
# the PyTorch 2.4.1 peer (torch + transformers 4.44.2 + peft 0.12.0 from /opt/zerolora-refdeps, bf16 autocast over
# fp32 base weights), interleaved, two rounds; then ours at T 2048 once (the peer is OOM-killed there on this VM).
#   bash bench/results/2026-12-08-w1-final.sh [build-dir] > bench/results/2026-12-08-w1-final-2threads.log 2>&1
cd "$(dirname "$0")/../.."
B=${1:-build-demo}/bench/bench_train_step
echo "# $(date -u) $(uptime); commit $(git rev-parse --short HEAD)"
for i in 1 2; do
  echo "## run $i ours load: $(cut -d' ' -f1-3 /proc/loadavg)"
  $B --preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 --lora_r 8 --lora_targets q_proj,v_proj --steps 3 --threads 2 --profile true 2>&1
  echo "## run $i peer load: $(cut -d' ' -f1-3 /proc/loadavg)"
  OMP_NUM_THREADS=2 PYTHONPATH=/opt/zerolora-refdeps timeout 900 python3 bench/peer_pytorch.py --preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 --lora-r 8 --lora-targets q_proj,v_proj --steps 3 --threads 2 2>&1 | grep -v Warning
done
echo "## T 2048 ours load: $(cut -d' ' -f1-3 /proc/loadavg)"
$B --preset tinyllama-1.1b --seq 2048 --batch 1 --dtype bf16 --lora_r 8 --lora_targets q_proj,v_proj --steps 2 --threads 2 --profile true 2>&1
echo "# end $(date -u) $(uptime)"
