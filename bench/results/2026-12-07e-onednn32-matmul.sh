# oneDNN 3.2 (PyPI onednn-cpu-gomp 2023.2.0) bf16 matmul vs our AMX kernels and Debian's oneDNN 2.6, 1 thread, M 512.
#   bash bench/results/2026-12-07e-onednn32-matmul.sh [build-dir] > bench/results/2026-12-07e-onednn32-matmul.log
set -eu
B=${1:-build-demo}
D=/tmp/zerolora-onednn32
mkdir -p $D && cd $D
ls w/onednn_cpu_gomp-2023.2.0-*.whl > /dev/null 2>&1 || pip download -q --no-deps onednn-cpu-gomp==2023.2.0 -d w
ls w/onednn_devel_cpu_gomp-2023.2.0-*.whl > /dev/null 2>&1 || pip download -q --no-deps onednn-devel-cpu-gomp==2023.2.0 -d w
for f in w/*.whl; do unzip -q -o "$f" -d x; done
I=$D/x/onednn_devel_cpu_gomp-2023.2.0.data/data/include L=$D/x/onednn_cpu_gomp-2023.2.0.data/data/lib
cd - > /dev/null
g++ -O2 -I$I bench/results/2026-12-07e-onednn32-matmul.cpp -L$L -ldnnl -Wl,-rpath,$L -o $D/mm
echo "# $(date -u) $(lscpu | grep 'Model name' | sed 's/  */ /g'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in 1 2; do
  echo "== round $r: ours (amx) and oneDNN 2.6 (onednn), conversion to bf16 and packing included"
  $B/bench/bench_cpu_matrix_units --rounds 3 --threads 1 --variants amx,onednn 2>&1 | grep -E '\| (amx|onednn) \|'
  echo "== round $r: oneDNN 3.2 matmul alone (bf16 inputs), median of 7"
  OMP_NUM_THREADS=1 $D/mm
done
echo "# load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
