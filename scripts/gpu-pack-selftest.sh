#!/usr/bin/env bash
# Checks a pack from scripts/gpu-pack.sh where no GPU is needed: unpacks it into a temporary folder, sets the
# environment scripts/gpu-check.sh sets (scripts/gpu-env.sh), and runs the carried OpenMPI as the multi-rank GPU
# test does: `mpirun --oversubscribe -np 2 zerolora train --device cpu` on stories260K (../shared) with ZeRO
# stage 2, which must train 2 ranks and write the adapter; then the carried test_e2e's ZeroMpi test (1-4 ranks
# under the carried mpirun). Meant for a machine without OpenMPI (a fresh Debian root; it prints whether the
# system has an mpirun of its own). The carried zerolora is the CUDA build, so it needs libcublasLt.so.13 and
# libcudnn.so.9 (GPU_ENV_CUDA_LIBS=DIR names a folder holding them, see gpu-env.sh; cuDNN's engine libraries are
# loaded only when cuDNN runs: not needed).
#   bash scripts/gpu-pack-selftest.sh [CARRY.tar.xz or .tar]      (default .gpucarry/carry.tar.xz)
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=$(realpath "${1:-.gpucarry/carry.tar.xz}")
SHARED=$(realpath "${SHARED:-../shared}")
T=$(mktemp -d /tmp/gpu-pack-selftest.XXXXXX); trap 'rm -rf "$T"' EXIT
mkdir "$T/pack" && tar -C "$T/pack" -xf "$CARRY"   # .tar.xz, or a .tar where xz is missing (a minbase root)
echo "system mpirun before gpu-env.sh: $(command -v mpirun || echo none); /usr/lib/x86_64-linux-gnu/openmpi:" \
  "$([ -d /usr/lib/x86_64-linux-gnu/openmpi ] && echo present || echo absent)"
. scripts/gpu-env.sh "$T/pack"
[ -n "$GPU_ENV_CUBLAS" ] && [ -n "$GPU_ENV_CUDNN" ] ||
  { echo "FAIL: libcublasLt.so.13 or libcudnn.so.9 not found (set GPU_ENV_CUDA_LIBS)"; exit 1; }
echo "mpirun: $(command -v mpirun)"
[ "$(command -v mpirun)" = "$T/pack/ompi/usr/bin/mpirun" ] || { echo "FAIL: mpirun is not the carried one"; exit 1; }
mpirun --version | head -1
ompi_info --path prefix --path pkglibdir --path pkgdatadir --path sysconfdir
missing=$(ldd "$ZEROLORA_BINARY" | grep 'not found' || true)
[ -z "$missing" ] || { echo "FAIL: zerolora misses libraries: $missing"; exit 1; }
printf '{"zero_optimization": {"stage": 2}, "gradient_clipping": "auto",
          "train_micro_batch_size_per_gpu": "auto"}' > "$T/ds.json"
# mca_base_component_show_load_errors: a carried plugin that cannot load says so (and fails the grep below)
set +e
timeout -k 5 120 mpirun --oversubscribe --mca mca_base_component_show_load_errors 1 -np 2 "$ZEROLORA_BINARY" train \
  --model_name_or_path "$SHARED/models/stories260K-hf" --data_path "$SHARED/data/dummy_conversation.json" \
  --output_dir "$T/out" --model_max_length 256 --per_device_train_batch_size 2 --max_steps 4 --logging_steps 1 \
  --save_strategy no --lora_r 4 --num_threads 1 --device cpu --deepspeed "$T/ds.json" > "$T/log" 2>&1
rc=$?
set -e
grep -v -E 'truncated before the first answer|^  \.\.\. and [0-9]+ more' "$T/log" | head -n 60
fail=()
[ $rc -eq 0 ] || fail+=("mpirun exit $rc")
grep -q -E 'x 2 ranks\), ZeRO stage 2' "$T/log" || fail+=("no 2-rank ZeRO-2 run in the log")
[ "$(grep -c -E '^epoch .* loss [0-9.]+ +step [0-9]+' "$T/log")" -eq 4 ] || fail+=("not 4 logged steps")
[ -f "$T/out/adapter_model.safetensors" ] || fail+=("no adapter written")
# OpenMPI/PMIx warnings (a plugin that does not load, a path that points outside the pack) fail it too
! grep -q -i -E 'component_find|unable to open|cannot open shared object|failed to add|directory exists' "$T/log" ||
  fail+=("OpenMPI/PMIx warned (plugin or path)")
# the carried test_e2e's MPI test as the e2e tests call mpirun (std::system, found on PATH): world sizes 1-4 x ZeRO
# stages 0-3 against one process, on the CPU; CudaE2E.TwoRanksShareOneGpu skips here (no GPU) and runs on one
echo "== test_e2e (carried mpirun): ZeroMpi.EveryWorldSizeAndStageMatchesOneProcess, CudaE2E.TwoRanksShareOneGpu"
timeout -k 5 300 "$GPU_ENV_DIR/bin/test_e2e" \
  --gtest_filter='ZeroMpi.EveryWorldSizeAndStageMatchesOneProcess:CudaE2E.TwoRanksShareOneGpu' > "$T/e2e.log" 2>&1 ||
  fail+=("test_e2e exit $?")
grep -E '^\[ *(OK|FAILED|SKIPPED|PASSED) *\]|Skipped|skipped' "$T/e2e.log" | sort -u
grep -q '^\[       OK \] ZeroMpi.EveryWorldSizeAndStageMatchesOneProcess' "$T/e2e.log" ||
  fail+=("ZeroMpi test did not pass")
if [ ${#fail[@]} -eq 0 ]; then
  echo "gpu-pack-selftest: PASS (carried mpirun: 2-rank ZeRO-2 train + adapter; ZeroMpi world sizes 1-4 x stages 0-3)"
else echo "gpu-pack-selftest: FAIL: ${fail[*]}"; exit 1; fi
