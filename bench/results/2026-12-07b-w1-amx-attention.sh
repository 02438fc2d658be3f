#!/bin/bash
# Issue 19, attention's bf16 products on AMX tiles: W1 (TinyLlama-1.1B shape, bf16, seq 512, batch 1, LoRA q,v r 8,
# 2 threads), before (ceefc1e, the state of 2026-12-07-w1-quiet.sh) and after (the commit below, built from a clean
# `git archive` snapshot into /tmp/h19-after), each with ZEROLORA_AMX_GEMM=1 (zerolora's AMX kernels; after: the
# attention products too) and =0 (oneDNN 2.6), interleaved; the PyTorch peer (torch 2.4.1 + transformers 4.44.2 +
# peft 0.12.0 from /opt/zerolora-refdeps) once. Each run's wall and CPU seconds (bash `time`: real, user, sys) and the
# load average before it are logged: the machine is shared (2 cores, other workers compiling), so also compare
# CPU-seconds (user+sys of the whole process: build, warm-up, 3 timed steps and the GEMM probe together).
#   before: git archive ceefc1e | tar -x -C /tmp/h19-before; after: git archive <commit> | tar -x -C /tmp/h19-after;
#   each: cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DZEROLORA_CUDA=OFF -DZEROLORA_BUILD_BENCH=ON
#         && ninja -C build bench_train_step
# Runs: AFTER_COMMIT=42153bd (products on AMX, passes split over the team) -> 2026-12-07b-w1-amx-attention-42153bd-2threads.log
# (load 1.4-5.9, useless as a comparison: every variant 3-10x slower than quiet); AFTER_COMMIT=ecaee0b (+ a kv head
# per thread) -> 2026-12-07b-w1-amx-attention-ecaee0b-2threads.log.
#   AFTER_COMMIT=ecaee0b bash bench/results/2026-12-07b-w1-amx-attention.sh > bench/results/2026-12-07b-w1-amx-attention-ecaee0b-2threads.log 2>&1
# and the same with OMP_WAIT_POLICY=passive for every process, peer included (idle OpenMP threads sleep instead of
# spinning: on this shared machine the default policy makes every barrier wait for a descheduled thread):
#   OMP_WAIT_POLICY=passive AFTER_COMMIT=ecaee0b bash bench/results/2026-12-07b-w1-amx-attention.sh \
#     > bench/results/2026-12-07b-w1-amx-attention-ecaee0b-passive-2threads.log 2>&1
# and once more with the default policy, without the peer, when the load had dropped:
#   PEER=0 AFTER_COMMIT=ecaee0b bash bench/results/2026-12-07b-w1-amx-attention.sh \
#     > bench/results/2026-12-07b-w1-amx-attention-ecaee0b-lower-load-2threads.log 2>&1
cd /work/main
AFTER_COMMIT=${AFTER_COMMIT:-unknown}
TIMEFORMAT='  time: real %R s, user %U s, sys %S s'
echo "# $(date -u) $(uptime); before ceefc1e, after $AFTER_COMMIT; $(nproc) CPUs; OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset}"
ours() {  # label build-dir amx
  echo "## run $i $1 ZEROLORA_AMX_GEMM=$3 load: $(cut -d' ' -f1-3 /proc/loadavg)"
  time (ZEROLORA_AMX_GEMM=$3 $2/bench/bench_train_step --preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 \
    --lora_r 8 --lora_targets q_proj,v_proj --steps 3 --profile true 2>&1)
}
for i in 1 2; do
  ours before /tmp/h19-before/build 1
  ours after /tmp/h19-after/build 1
  ours before /tmp/h19-before/build 0
  ours after /tmp/h19-after/build 0
  if [ "$i" = 1 ] && [ "${PEER:-1}" = 1 ]; then
    echo "## run $i peer load: $(cut -d' ' -f1-3 /proc/loadavg)"
    time (OMP_NUM_THREADS=2 PYTHONPATH=/opt/zerolora-refdeps timeout 900 python3 bench/peer_pytorch.py --preset tinyllama-1.1b \
      --seq 512 --batch 1 --dtype bf16 --lora-r 8 --lora-targets q_proj,v_proj --steps 3 --threads 2 2>&1 | grep -v Warning)
  fi
done
echo "# end $(date -u) $(uptime)"
