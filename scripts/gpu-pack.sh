#!/usr/bin/env bash
# Builds the CUDA build here (no GPU needed) and packs what scripts/gpu-check.sh runs on a GPU machine that has
# no Debian packages and no network: the test and benchmark binaries, zerolora, and the Debian libraries they
# load (oneDNN, OpenMPI, sentencepiece, libgomp, libstdc++), as .gpucarry/carry.tar.xz. The GPU machine brings
# the NVIDIA driver, cuBLASLt (CUDA 13) and cuDNN 9 (its engines are hundreds of MB: not carried); the CUDA
# runtime is linked into the binaries.
#   bash scripts/gpu-pack.sh [build-dir]     (default build-cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build-cuda}
bash scripts/fetch-cudnn-frontend.sh
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DZEROLORA_CUDA=ON -DZEROLORA_CUDNN=ON > /dev/null
ninja -C "$B" -j2 zerolora test_kernels test_model test_train test_e2e bench_train_step bench_cuda_lora_gemms
rm -rf .gpucarry && mkdir -p .gpucarry/pack/lib .gpucarry/pack/bin
cp "$B/zerolora" "$B/tests/test_kernels" "$B/tests/test_model" "$B/tests/test_train" "$B/tests/test_e2e" "$B/bench/bench_train_step" \
   "$B/bench/bench_cuda_lora_gemms" .gpucarry/pack/bin/
# every shared library the binaries load, except glibc's own and the CUDA/driver ones the GPU machine has
for bin in .gpucarry/pack/bin/*; do ldd "$bin"; done | awk '/=> \//{print $3}' | sort -u |
  grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux-x86-64)\.so|libcublas|libcuda\.so|libcudart|libcudnn' |
  while read -r lib; do cp -L "$lib" .gpucarry/pack/lib/; done
tar -C .gpucarry/pack -cJf .gpucarry/carry.tar.xz bin lib
rm -rf .gpucarry/pack
ls -la .gpucarry/carry.tar.xz
