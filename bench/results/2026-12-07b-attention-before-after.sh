#!/bin/bash
# Issue 19: the bf16 blocked attention (TinyLlama heads: 32 query, 4 kv, head dim 64; B 1, T 512; forward + backward
# per iteration, keys per product 256), before (ceefc1e: oneDNN 2.6's bf16 matmul, gemm:jit) and after (ecaee0b: the
# products on zerolora's AMX tiles, the passes in memory order, a kv head per thread), each also with
# ZEROLORA_AMX_GEMM=0, on 1 thread (the "CPU" column is then all the work: per-CPU-second figures on a loaded
# machine) and 2 threads (default OpenMP wait policy, as the trainer runs, and OMP_WAIT_POLICY=passive), interleaved.
# Binaries: git archive <commit> | tar -x -C /tmp/h19-{before,after}; cmake ... -DZEROLORA_CUDA=OFF
# -DZEROLORA_BUILD_BENCH=ON; ninja -C build bench_attention.
#   bash bench/results/2026-12-07b-attention-before-after.sh > bench/results/2026-12-07b-attention-before-after.log 2>&1
echo "# $(date -u) $(uptime)"
for r in 1 2; do
  for threads in 1 2; do
    for wp in default passive; do
      [ "$threads" = 1 ] && [ "$wp" = passive ] && continue
      for which in before after; do
        for amx in 1 0; do
          env_wp=""; [ "$wp" = passive ] && env_wp="OMP_WAIT_POLICY=passive"
          line=$(env $env_wp OMP_NUM_THREADS=$threads ZEROLORA_AMX_GEMM=$amx /tmp/h19-$which/build/bench/bench_attention \
            --benchmark_filter='blocked_bf16/1/512/256' --benchmark_min_time=1 2>&1 | grep BM_)
          echo "round $r threads $threads wait=$wp $which AMX=$amx load $(cut -d' ' -f1 /proc/loadavg): $line"
        done
      done
    done
  done
done
echo "# end $(date -u) $(uptime)"
