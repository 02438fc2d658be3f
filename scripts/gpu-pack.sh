#!/usr/bin/env bash
# Builds the CUDA build here (no GPU needed) and packs what scripts/gpu-check.sh runs on a GPU machine that has
# no Debian packages and no network: the test and benchmark binaries, zerolora, and the Debian libraries they
# load (oneDNN, OpenMPI, sentencepiece, libgomp, libstdc++), and Debian's OpenMPI 4.1 runtime (mpirun, for the
# multi-rank GPU test), as .gpucarry/carry.tar.xz. The GPU machine brings the NVIDIA driver, cuBLASLt (CUDA 13)
# and cuDNN 9 (its engines are hundreds of MB: not carried); the CUDA runtime is linked into the binaries.
# The pack: bin/ (ours), lib/ (every library anything below loads), ompi/ (OpenMPI's tree, relocated with
# OPAL_PREFIX / PMIX_PREFIX: scripts/gpu-env.sh sets them). scripts/gpu-pack-selftest.sh checks a pack on a machine
# without OpenMPI.
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
# OpenMPI 4.1's runtime as Debian installs it (openmpi-bin, libopenmpi3, openmpi-common, libpmix2), in the same
# layout under ompi/ (ompi/usr = Debian's prefix /usr): mpirun (= orterun), orted, ompi_info, the MCA plugins
# (pkglibdir), the help texts (pkgdatadir), /etc/openmpi's parameter file (it turns off openib/ofi/ucx), and
# PMIx's plugins and texts. Plugins for fabrics the GPU machine lacks (UCX, libfabric/OFI, verbs, PSM/PSM2) and
# OpenSHMEM's are left out (with their libraries, ~7 MB, they would only find no such hardware there); 2 local
# ranks use shared memory (btl vader) and TCP. hwloc's plugins (PCI/OpenCL/GL topology) are left out too: hwloc
# runs without them.
A=/usr/lib/x86_64-linux-gnu O=.gpucarry/pack/ompi
[ -x /usr/bin/orterun ] && [ -d $A/openmpi/lib/openmpi3 ] && [ -f $A/pmix2/lib/libpmix.so.2 ] ||
  { echo "gpu-pack: needs Debian's OpenMPI 4.1 (apt-get install openmpi-bin libopenmpi-dev)"; exit 1; }
mkdir -p $O/usr/bin $O/usr/share $O/etc $O/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3 \
  $O/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix $O/usr/lib/x86_64-linux-gnu/pmix2/share
cp /usr/bin/orterun /usr/bin/orted /usr/bin/ompi_info $O/usr/bin/
ln -s orterun $O/usr/bin/mpirun && ln -s orterun $O/usr/bin/mpiexec
skip='libuc[mpst]\.so|libfabric\.so|libibverbs\.so|librdmacm\.so|libpsm|libinfinipath|libefa\.so|liboshmem\.so'
skipped=()
for p in $A/openmpi/lib/openmpi3/*.so; do
  if grep -q -E "$skip" <<< "$(ldd "$p")"; then skipped+=("$(basename "$p" .so)")
  else cp "$p" $O/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/; fi
done
echo "gpu-pack: OpenMPI plugins left out (UCX/OFI/verbs/PSM/OpenSHMEM): ${skipped[*]}"
cp -r /usr/share/openmpi $O/usr/share/ && cp -r /etc/openmpi $O/etc/
cp $A/pmix2/lib/pmix/*.so $O/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix/
cp -r $A/pmix2/share/. $O/usr/lib/x86_64-linux-gnu/pmix2/share/
# every shared library the binaries and plugins load, except glibc's own and the CUDA/driver ones the GPU machine has
objs=(.gpucarry/pack/bin/* $O/usr/bin/orterun $O/usr/bin/orted $O/usr/bin/ompi_info
      $O/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/*.so $O/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix/*.so)
missing=$(for f in "${objs[@]}"; do ldd "$f" | sed -n "s|.*not found.*|$f: &|p"; done)
[ -z "$missing" ] || { echo "gpu-pack: libraries not found here:"; echo "$missing"; exit 1; }
for f in "${objs[@]}"; do ldd "$f"; done | awk '/=> \//{print $3}' | sort -u |
  grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux-x86-64)\.so|libcublas|libcuda\.so|libcudart|libcudnn' |
  while read -r lib; do cp -L "$lib" .gpucarry/pack/lib/; done
du -sh .gpucarry/pack/bin .gpucarry/pack/lib .gpucarry/pack/ompi
tar -C .gpucarry/pack -cJf .gpucarry/carry.tar.xz bin lib ompi
rm -rf .gpucarry/pack
ls -la .gpucarry/carry.tar.xz
