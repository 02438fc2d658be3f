// What the CPU backend runs on this machine: the CPU's vector and matrix extensions, the oneDNN build and
// the instruction set it uses, and which of zerolora's kernel variants each op picks (zerolora --version).
//
// ONEDNN_MAX_CPU_ISA (oneDNN's own variable: AVX2, AVX512_CORE, AVX512_CORE_BF16, AVX512_CORE_AMX) caps the
// whole CPU backend, not only oneDNN: zerolora's own AVX-512 kernels (attention) run only where oneDNN's
// effective ISA includes AVX-512, its AMX kernels (the frozen bf16 linears, kernels/cpu/amx_gemm.h) only
// where it includes AVX512_CORE_AMX, and the bf16 matmul is native only where oneDNN has one at that ISA. So one
// machine with AMX runs the kernels an AVX2-only CPU (Zen 3: ONEDNN_MAX_CPU_ISA=AVX2) or an AVX-512 CPU
// without AMX (Zen 4: ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16) would run; the tests are run that way too.
#pragma once
#include <string>
#include <vector>

namespace zerolora::kernels {

struct CpuBackendInfo {
  std::string cpu_extensions;   // what the CPU has, e.g. "avx2 fma avx512f avx512bw avx512vl avx512_bf16 amx_bf16"
  std::string onednn_version;   // e.g. "2.6.3 (Debian libdnnl)"
  std::string onednn_isa;       // oneDNN's effective ISA, e.g. "avx512_core_amx", and the cap when one is set
  std::string attention;        // the attention copy used: "avx512" or "avx2"
  bool attention_bf16_native = false;  // its bf16 operands rounded by AVX512-BF16's vcvtneps2bf16
  std::string bf16_matmul;      // "native (zerolora AMX tiles ...; oneDNN <impl> otherwise)", "native (oneDNN <impl>)"
                                // or "portable (bf16-rounded inputs through sgemm)"
  std::string f32_matmul;       // the oneDNN implementation an f32 matmul gets
  int threads = 0;              // OpenMP threads
  std::vector<std::string> variants_here;  // ONEDNN_MAX_CPU_ISA values this machine can run the tests with
};

CpuBackendInfo cpu_backend_info();

}  // namespace zerolora::kernels
