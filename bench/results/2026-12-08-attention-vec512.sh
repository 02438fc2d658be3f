#!/bin/bash
# The blocked attention's row passes (online softmax; P and dS) in AVX-512 intrinsics with one vcvtneps2bf16 per 16
# bf16 operands where the CPU has AVX512-BF16 (2026-12-08, kernels/cpu/vec512.h) against the build before it (commit
# 512f5c1), interleaved in one run: bench_attention (1 thread, fwd + bwd, B 1, T 512 and 2048, chunk 256) and
# bench_train_step (W1: TinyLlama shape, bf16, q,v r 8, 2 threads, T 512 and 2048).
#   BEFORE=<build dir of 512f5c1> bash bench/results/2026-12-08-attention-vec512.sh [build-dir] > ....log 2>&1
set -u
B=${1:-build-demo}
echo "# $(date -u) $(lscpu | grep 'Model name' | sed 's/  */ /g'); commit $(git rev-parse --short HEAD); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in 1 2 3; do
  for v in before after; do
    d=$([ $v = before ] && echo "$BEFORE" || echo "$B")
    echo "== bench_attention, $v, round $r, load $(cut -d' ' -f1 /proc/loadavg)"
    OMP_NUM_THREADS=1 $d/bench/bench_attention --benchmark_filter='blocked_bf16/(1/2048|1/512)/256' --benchmark_min_time=2 2>&1 | grep BM_
  done
done
for r in 1 2; do
  for T in 512 2048; do
    for v in before after; do
      d=$([ $v = before ] && echo "$BEFORE" || echo "$B")
      echo "== bench_train_step T $T, $v, round $r, load $(cut -d' ' -f1 /proc/loadavg)"
      $d/bench/bench_train_step --preset tinyllama-1.1b --seq $T --batch 1 --dtype bf16 --lora_r 8 \
        --lora_targets q_proj,v_proj --steps 2 --threads 2 --no_gemm true --profile true 2>&1 | grep -E "^  (step|time by op)"
    done
  done
done
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
