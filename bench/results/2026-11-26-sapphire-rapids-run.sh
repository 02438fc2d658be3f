#!/bin/bash
# One device run: CPU identity, native bf16 kernel tests, GEMM rates and a LoRA training step on 2 cores,
# ours vs the image's PyTorch (bf16 autocast), interleaved. Binaries and Debian's libraries come along
# (run through Debian's own loader, so the image's glibc does not matter).
D=$(pwd)/.devcarry
L="$D/lib/ld-linux-x86-64.so.2 --library-path $D/lib"
export OMP_WAIT_POLICY=passive
echo "== cpu"; lscpu | grep -E "Model name|Socket|Core|Thread|NUMA node0|Flags" | sed 's/Flags:/Flags:/' | cut -c1-400
grep -o -w -E "amx_bf16|amx_tile|avx512_bf16|avx512f" /proc/cpuinfo | sort | uniq -c
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__); print(torch.backends.mkldnn.is_available())"
echo "== native bf16 kernel tests"
timeout 120 $L $D/test_kernels --gtest_filter='LinearBf16.*:*Bf16*:*Prepack*' 2>&1 | tail -15
echo "== gemm, 2 cores"
OMP_NUM_THREADS=2 timeout 120 taskset -c 0,1 $L $D/bench_gemm --benchmark_min_time=0.3 2>&1 | grep -E "BM_|Run on" | tail -14
S="--preset tinyllama-1.1b --seq 512 --batch 1 --lora-r 8 --lora-targets q_proj,v_proj --steps 2 --threads 2"
for i in 1 2; do
  echo "== ours bf16 run $i"; OMP_NUM_THREADS=2 timeout 200 taskset -c 0,1 $L $D/bench_train_step $S --dtype bf16 2>&1 | tail -2
  echo "== ours bf16 prepacked run $i"; OMP_NUM_THREADS=2 timeout 200 taskset -c 0,1 $L $D/bench_train_step $S --dtype bf16 --prepack --no-gemm 2>&1 | tail -2
  echo "== peer bf16 autocast run $i"; OMP_NUM_THREADS=2 timeout 300 taskset -c 0,1 python3 bench/peer_pytorch.py $S --dtype bf16 2>&1 | tail -2
done
echo "== ours nf4"; OMP_NUM_THREADS=2 timeout 200 taskset -c 0,1 $L $D/bench_train_step $S --dtype nf4 --no-gemm 2>&1 | tail -2
