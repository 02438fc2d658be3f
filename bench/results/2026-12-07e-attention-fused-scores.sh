# The bf16 attention backward with P and dS formed per 32 x 32 block of S and dP (cpu::amx_gemm_bf16_pair, 2026-12-07
# (e)) against the build before it, interleaved in one run: bench_attention (1 thread, fwd + bwd, B 1, T 512 and 2048)
# and bench_train_step (TinyLlama shape, q,v r 8, 2 threads, T 512 and 2048).
#   BEFORE_ATT=... BEFORE_STEP=... bash bench/results/2026-12-07e-attention-fused-scores.sh [build-dir] > ....log
set -u
B=${1:-build-demo}
echo "# $(date -u) $(lscpu | grep 'Model name' | sed 's/  */ /g'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in 1 2; do
  for v in before after; do
    att=$([ $v = before ] && echo "$BEFORE_ATT" || echo "$B/bench/bench_attention")
    echo "== bench_attention, $v, round $r"
    OMP_NUM_THREADS=1 $att --benchmark_filter='blocked_bf16/(1/2048|1/512)/256' --benchmark_min_time=2 2>&1 | grep BM_
  done
done
for r in 1 2; do
  for T in 512 2048; do
    for v in before after; do
      step=$([ $v = before ] && echo "$BEFORE_STEP" || echo "$B/bench/bench_train_step")
      echo "== bench_train_step T $T, $v, round $r"
      $step --seq $T --steps 2 --no_gemm true --threads 2 2>&1 | grep -E "^  step"
    done
  done
done
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
