#!/bin/bash
# W1 (TinyLlama-1.1B shape, bf16, seq 512, batch 1, LoRA q,v r 8, 2 threads) on the quiet 2-core Sapphire Rapids
# VM, 2026-12-07 (third session), interleaved, two rounds:
#   - ours after c5bebef (projection inputs recomputed, d gate/d up in place: less activation memory) and ours
#     before it (9af9365), AMX kernels;
#   - ours and the PyTorch 2.4.1 peer (torch + transformers 4.44.2 + peft 0.12.0 from /opt/zerolora-refdeps, bf16
#     autocast over fp32 base weights) with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 on both: AMX off, the ISA an AVX512-BF16
#     CPU without AMX (Zen 4) runs; an emulation on this CPU, not a Zen 4 measurement (its cache, clocks and FMA
#     ports differ);
#   - the recompute's cost where every projection is adapted (all seven, r 16): ours after vs before.
# Binaries: AFTER / BEFORE (bench_train_step built at those commits, CPU-only Release builds).
cd "$(dirname "$0")/../.." || exit 1
AFTER=${AFTER:-/tmp/w1bin/after}
BEFORE=${BEFORE:-/tmp/w1bin/before}
W1="--preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 --lora_r 8 --lora_targets q_proj,v_proj --steps 3"
ALL="--preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 --lora_r 16 --lora_targets all --steps 3"
peer() {
  OMP_NUM_THREADS=2 PYTHONPATH=/opt/zerolora-refdeps timeout 900 python3 bench/peer_pytorch.py --preset tinyllama-1.1b \
    --seq 512 --batch 1 --dtype bf16 --lora-r 8 --lora-targets q_proj,v_proj --steps 3 --threads 2 2>&1 | grep -v Warning
}
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "# $(date -u) $(uptime); commit $(git rev-parse --short HEAD)"
for i in 1 2; do
  echo "## run $i ours after (AMX) load: $(load)";  OMP_NUM_THREADS=2 $AFTER $W1 --profile true 2>&1
  echo "## run $i ours before (AMX) load: $(load)"; OMP_NUM_THREADS=2 $BEFORE $W1 2>&1
  echo "## run $i peer load: $(load)"; peer
  echo "## run $i ours after ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 load: $(load)"
  ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 OMP_NUM_THREADS=2 $AFTER $W1 --profile true 2>&1
  echo "## run $i peer ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 load: $(load)"; ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 peer
  echo "## run $i ours after, all seven r 16 load: $(load)"; OMP_NUM_THREADS=2 $AFTER $ALL --no_gemm true --json_only true 2>&1
  echo "## run $i ours before, all seven r 16 load: $(load)"; OMP_NUM_THREADS=2 $BEFORE $ALL --no_gemm true --json_only true 2>&1
done
echo "# end $(date -u) $(uptime)"
