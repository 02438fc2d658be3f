#include "kernels/cpu_info.h"

#include <cpuid.h>
#include <omp.h>

#include <cstdlib>

#include <oneapi/dnnl/dnnl.hpp>

#include "kernels/cpu/amx_gemm.h"
#include "kernels/cpu/attention_variants.h"
#include "kernels/cpu/onednn.h"
#include "kernels/cpu/vec512.h"

namespace zerolora::kernels {

namespace {

bool isa_includes(dnnl::cpu_isa have, dnnl::cpu_isa want) {
  return (unsigned(have) & unsigned(want)) == unsigned(want);
}

std::string isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::all: return "all";
    default: return "0x" + [&] { char b[16]; std::snprintf(b, sizeof b, "%x", unsigned(isa)); return std::string(b); }();
  }
}

std::string matmul_impl(dnnl::memory::data_type in) {
  using dnnl::memory;
  try {
    memory::desc a({64, 64}, in, memory::format_tag::ab), b({64, 64}, in, memory::format_tag::ba);
    memory::desc c({64, 64}, memory::data_type::f32, memory::format_tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), cpu::dnnl_engine());
    return pd.impl_info_str();
  } catch (const dnnl::error&) {
    return "none";
  }
}

}  // namespace

CpuBackendInfo cpu_backend_info() {
  CpuBackendInfo r;
  unsigned a, b, c, d;
  auto add = [&](bool on, const char* name) {
    if (on) r.cpu_extensions += (r.cpu_extensions.empty() ? "" : " ") + std::string(name);
  };
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    add(b & (1u << 5), "avx2");
    add(b & (1u << 16), "avx512f");
    add(b & (1u << 17), "avx512dq");
    add(b & (1u << 30), "avx512bw");
    add(b & (1u << 31), "avx512vl");
    add(c & (1u << 11), "avx512_vnni");
    unsigned a1, b1, c1, d1;
    if (__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1)) add(a1 & (1u << 5), "avx512_bf16");
    add(d & (1u << 24), "amx_tile");
    add(d & (1u << 22), "amx_bf16");
  }
  const dnnl_version_t* v = dnnl_version();
  r.onednn_version = std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
                     (v->hash && std::string(v->hash) != "N/A" ? std::string(" (") + v->hash + ")" : "");
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  r.onednn_isa = isa_name(isa);
  if (const char* cap = std::getenv("ONEDNN_MAX_CPU_ISA")) r.onednn_isa += std::string(" (ONEDNN_MAX_CPU_ISA=") + cap + ")";
  else if (const char* cap2 = std::getenv("DNNL_MAX_CPU_ISA")) r.onednn_isa += std::string(" (DNNL_MAX_CPU_ISA=") + cap2 + ")";
  r.attention = attention_best_isa() == AttentionIsa::Avx512 ? "avx512" : "avx2";
  r.attention_bf16_native = attention_avx512_bf16_available();
  r.bf16_matmul = !cpu::bf16_native_available()
                      ? std::string("portable (inputs rounded to bf16, weights widened, fp32 sums through sgemm)")
                  : cpu::amx_gemm_in_use()
                      ? "native (zerolora AMX tiles for frozen linears of >= 32 rows; oneDNN " +
                            matmul_impl(dnnl::memory::data_type::bf16) + " otherwise)"
                      : "native (oneDNN " + matmul_impl(dnnl::memory::data_type::bf16) + ")";
  r.f32_matmul = "oneDNN " + matmul_impl(dnnl::memory::data_type::f32);
  r.threads = omp_get_max_threads();
  // the caps a test run can set here: each ISA the CPU has that changes which kernels run
  const bool avx512 = r.cpu_extensions.find("avx512bw") != std::string::npos;
  const bool bf16 = r.cpu_extensions.find("avx512_bf16") != std::string::npos;
  const bool amx = r.cpu_extensions.find("amx_bf16") != std::string::npos;
  if (r.cpu_extensions.find("avx2") != std::string::npos) r.variants_here.push_back("AVX2");
  if (avx512) r.variants_here.push_back("AVX512_CORE");
  if (bf16) r.variants_here.push_back("AVX512_CORE_BF16");
  if (amx) r.variants_here.push_back("AVX512_CORE_AMX");
  return r;
}

bool onednn_isa_has_avx512() { return isa_includes(dnnl::get_effective_cpu_isa(), dnnl::cpu_isa::avx512_core); }

namespace cpu {
bool avx512_enabled() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                          onednn_isa_has_avx512();
  return yes;
}
}  // namespace cpu

bool attention_avx512_bf16_available() {
  static const bool yes = attention_avx512_available() && __builtin_cpu_supports("avx512bf16") &&
                          isa_includes(dnnl::get_effective_cpu_isa(), dnnl::cpu_isa::avx512_core_bf16);
  return yes;
}

}  // namespace zerolora::kernels
