# The environment for the binaries scripts/gpu-pack.sh packs, with the pack unpacked in DIR: sourced (not run) by
# scripts/gpu-check.sh on the GPU machine and by scripts/gpu-pack-selftest.sh, so both see the same one.
#   . scripts/gpu-env.sh DIR
# Sets PATH (the carried mpirun/orterun/orted/ompi_info first), LD_LIBRARY_PATH (the carried Debian libraries, then
# the machine's cuBLASLt 13 and cuDNN 9), OpenMPI's and PMIx's relocation variables, ZEROLORA_BINARY, and sets
# GPU_ENV_CUBLAS / GPU_ENV_CUDNN to the libcublasLt.so.13 / libcudnn.so.9 found (empty when none): the caller
# decides whether it needs them. Extra places to look for them: GPU_ENV_CUDA_LIBS (a colon-separated list).
GPU_ENV_DIR=$(cd "${1:?usage: . scripts/gpu-env.sh DIR (where .gpucarry/carry.tar.xz was unpacked)}" && pwd)
# OpenMPI 4.1 (Debian's build, configured with --prefix=/usr) carried as the tree ompi/usr + ompi/etc/openmpi:
# OPAL_PREFIX moves every directory it derives from the prefix (bindir, pkglibdir = the MCA plugins, pkgdatadir =
# the help texts); its sysconfdir (/etc/openmpi, Debian's openmpi-mca-params.conf) is absolute, so it gets its own.
export OPAL_PREFIX="$GPU_ENV_DIR/ompi/usr"
export OPAL_SYSCONFDIR="$GPU_ENV_DIR/ompi/etc/openmpi"
# PMIx 4.2 (Debian's libpmix2, prefix /usr/lib/x86_64-linux-gnu/pmix2, libdir and datadir written out absolute):
# PMIX_PREFIX plus the directories it does not derive (its help texts: pkgdatadir). Its plugin path (pcompress,
# prm) is compiled in as an absolute default that no prefix moves: PMIx's MCA variable sets it.
export PMIX_PREFIX="$GPU_ENV_DIR/ompi/usr/lib/x86_64-linux-gnu/pmix2"
export PMIX_LIBDIR="$PMIX_PREFIX/lib" PMIX_PKGLIBDIR="$PMIX_PREFIX/lib/pmix"
export PMIX_DATADIR="$PMIX_PREFIX/share" PMIX_PKGDATADIR="$PMIX_PREFIX/share/pmix" PMIX_SYSCONFDIR="$PMIX_PREFIX/share"
export PMIX_MCA_mca_base_component_path="$PMIX_PKGLIBDIR"
export PATH="$OPAL_PREFIX/bin:$PATH"
# mpirun as root (the GPU machine's and the fresh root's only user); ranks on this machine only, started by the
# isolated launcher (the default rsh launcher refuses to start where there is no ssh/rsh: "plm_rsh_agent: ssh : rsh
# ... could not be found"); shared memory between ranks without cross-memory attach (process_vm_readv), which
# containers often forbid ("Read -1, expected ..., errno = 1")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm=isolated
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export ZEROLORA_BINARY="$GPU_ENV_DIR/bin/zerolora"
# cuBLASLt 13 and cuDNN 9: the machine's (a CUDA 13 toolkit or PyTorch's nvidia-cublas / nvidia-cudnn-cu13 wheels)
gpu_env_find() {  # gpu_env_find NAME: the first file NAME (or NAME.*) in GPU_ENV_CUDA_LIBS, /usr/local, /opt, /usr/lib
  local extra=() d
  IFS=: read -r -a extra <<< "${GPU_ENV_CUDA_LIBS:-}"
  for d in "${extra[@]}"; do [ -n "$d" ] && [ -e "$d/$1" ] && { echo "$d/$1"; return; }; done
  { find /usr/local /opt /usr/lib -xdev \( -name "$1" -o -name "$1.*" \) -not -path '/proc/*' 2>/dev/null || true; } |
    head -1
}
GPU_ENV_CUBLAS=$(gpu_env_find libcublasLt.so.13)
GPU_ENV_CUDNN=$(gpu_env_find libcudnn.so.9)
GPU_ENV_LD="$GPU_ENV_DIR/lib"
if [ -n "$GPU_ENV_CUBLAS" ]; then GPU_ENV_LD+=":$(dirname "$GPU_ENV_CUBLAS")"; fi
if [ -n "$GPU_ENV_CUDNN" ]; then GPU_ENV_LD+=":$(dirname "$GPU_ENV_CUDNN")"; fi
export LD_LIBRARY_PATH="$GPU_ENV_LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
