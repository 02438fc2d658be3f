# The AMX dX change of 2026-12-07 (e) (the weight interleaved row pair by row pair over the group's panels), A/B in
# one interleaved run: BEFORE = bench_cpu_matrix_units built at b60cdb1 (the panel-by-panel interleave), AFTER = at
# 413024b. Only the AMX kernels, only the dX products, 1 and 2 threads, 3 rounds each, 2 alternations.
#   BEFORE=/path/to/old/bench_cpu_matrix_units AFTER=build-demo/bench/bench_cpu_matrix_units \
#     bash bench/results/2026-12-07e-amx-dx-row-order.sh > bench/results/2026-12-07e-amx-dx-row-order.log
set -u
echo "# $(date -u) $(lscpu | grep 'Model name' | sed 's/  */ /g'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in 1 2; do
  for r in 1 2; do
    for v in BEFORE AFTER; do
      echo "== $v, $t thread(s), alternation $r"
      "${!v}" --rounds 3 --threads $t --variants amx --only dX 2>&1 | grep '| amx |'
    done
  done
done
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
