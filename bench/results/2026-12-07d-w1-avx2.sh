#!/bin/bash
# W1 (TinyLlama-1.1B shape, bf16, seq 512, batch 1, LoRA q,v r 8, 2 threads) with both sides capped to AVX2 on the
# quiet 2-core Sapphire Rapids VM (2026-12-07, third session): ONEDNN_MAX_CPU_ISA=AVX2 for ours (oneDNN 2.6 and
# zerolora's own kernels: the AVX2 builds of attention etc., no bf16 matmul in oneDNN 2.6 there) and for the
# PyTorch 2.4.1 peer's oneDNN, plus ATEN_CPU_CAPABILITY=avx2 for the peer's own kernels. An emulation of an
# AVX2-only CPU (Zen 3) on this CPU, not a Zen 3 measurement. One round: ours, peer, ours.
cd "$(dirname "$0")/../.." || exit 1
OURS=${OURS:-/tmp/w1bin/fused}
W1="--preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 --lora_r 8 --lora_targets q_proj,v_proj --steps 2"
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "# $(date -u) $(uptime); commit $(git rev-parse --short HEAD)"
export ONEDNN_MAX_CPU_ISA=AVX2
echo "## ours AVX2 load: $(load)"; OMP_NUM_THREADS=2 $OURS $W1 --profile true 2>&1
echo "## peer AVX2 (ATEN_CPU_CAPABILITY=avx2) load: $(load)"
ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=2 PYTHONPATH=/opt/zerolora-refdeps timeout 1500 python3 bench/peer_pytorch.py \
  --preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 --lora-r 8 --lora-targets q_proj,v_proj --steps 2 \
  --threads 2 2>&1 | grep -v Warning
echo "## ours AVX2 again load: $(load)"; OMP_NUM_THREADS=2 $OURS $W1 2>&1 | tail -2
echo "# end $(date -u) $(uptime)"
