#!/bin/bash
# The LoRA dropout mask on 16 lanes (AVX-512 copy of cpu::dropout_run, 2026-12-08) against the build before it
# (commit 89e264d), interleaved: the W1 shape with all seven projections adapted, r 16,
# alpha 32, dropout 0.05 (FastChat-style "all" targets), T 512, 2 threads, then dropout 0 (no mask) as the floor.
#   BEFORE=<build dir without it> bash bench/results/2026-12-08-lora-dropout-avx512.sh [build-dir] > ....log 2>&1
set -u
B=${1:-build-demo}
echo "# $(date -u) $(lscpu | grep 'Model name' | sed 's/  */ /g'); commit $(git rev-parse --short HEAD); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in 1 2; do
  for v in before after; do
    d=$([ $v = before ] && echo "$BEFORE" || echo "$B")
    echo "== all seven r 16 dropout 0.05, $v, round $r, load $(cut -d' ' -f1 /proc/loadavg)"
    $d/bench/bench_train_step --preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 --lora_r 16 --lora_alpha 32 \
      --lora_dropout 0.05 --lora_targets all --steps 3 --threads 2 --no_gemm true --profile true 2>&1 | grep -E "^  (step|time by op)"
  done
done
echo "== all seven r 16 dropout 0 (no mask), after, load $(cut -d' ' -f1 /proc/loadavg)"
$B/bench/bench_train_step --preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 --lora_r 16 --lora_alpha 32 \
  --lora_dropout 0 --lora_targets all --steps 3 --threads 2 --no_gemm true --profile true 2>&1 | grep -E "^  (step|time by op)"
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
