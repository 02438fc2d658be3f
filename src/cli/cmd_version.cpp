// zerolora --version: what this binary is (commit, build flags, CUDA backend) and what it runs on this machine
// (the CPU's extensions, oneDNN and its ISA, which kernel variant each op picks).
#define OMPI_SKIP_MPICXX 1  // the C API only (the C++ bindings are not linked)
#include <mpi.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "cli/commands.h"
#include "kernels/context.h"
#include "kernels/cpu_info.h"
#include "kernels/kernels.h"
#include "zerolora_build_info.h"

namespace zerolora::cli {

namespace {

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

}  // namespace

int cmd_version(int argc, char** argv) {
  train::FlagSet fs("zerolora --version",
                    "usage: zerolora --version\n"
                    "What this binary is (commit, build flags, CUDA backend) and what it runs here (CPU extensions, "
                    "oneDNN,\nthe kernel variant each op picks, MPI, GPUs). No flags.");
  if (!parse_flags(fs, argc, argv)) return 0;
  std::printf("zerolora %s (commit %s, %s)\n", ZEROLORA_VERSION, ZEROLORA_GIT_COMMIT, ZEROLORA_GIT_DATE);
  std::printf("build:        %s\n", ZEROLORA_BUILD_FLAGS);
  const kernels::CpuBackendInfo cpu = kernels::cpu_backend_info();
  std::printf("CPU:          %s; %s\n", cpu_model_name().c_str(), cpu.cpu_extensions.c_str());
  std::printf("GEMM library: oneDNN %s, effective ISA %s\n", cpu.onednn_version.c_str(), cpu.onednn_isa.c_str());
  std::printf("CPU kernels:  f32 matmul %s\n", cpu.f32_matmul.c_str());
  std::printf("              bf16 matmul %s\n", cpu.bf16_matmul.c_str());
  std::printf("              attention %s copy (avx2%s built)%s\n", cpu.attention.c_str(),
#if defined(__GNUC__) && !defined(__clang__)
              ", avx512"
#else
              ""
#endif
              ,
              cpu.attention_bf16_native ? ", bf16 operands rounded by avx512_bf16" : "");
  std::printf("              LoRA dropout %s\n",
              kernels::lora_fused_enabled()
                  ? "fused into its products (float; on the CPU from 2^19 elements of [M, in] operand)"
                  : "unfused: dropout_apply + GEMMs (ZEROLORA_LORA_FUSED=0)");
  std::printf("              %d OpenMP threads\n", cpu.threads);
  std::string caps;
  for (const auto& v : cpu.variants_here) caps += (caps.empty() ? "" : ", ") + v;
  std::printf("              kernel variants this CPU can run (ONEDNN_MAX_CPU_ISA=...): %s\n", caps.c_str());
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(mpi, &len);
  std::string m(mpi, size_t(len));
  if (auto nl = m.find_first_of(",\n"); nl != std::string::npos) m.resize(nl);
  std::printf("MPI:          %s\n", m.c_str());
  std::printf("CUDA backend: %s%s\n", kernels::cuda_built() ? "built, " : "", ZEROLORA_CUDA_BUILD);
  if (kernels::cuda_built()) {
    std::printf("GPUs:         %s\n", kernels::cuda_devices_summary().c_str());
    std::printf("Attention:    %s\n", kernels::cuda_attention_library().c_str());
  }
  return 0;
}

}  // namespace zerolora::cli
