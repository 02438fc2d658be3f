// Linear layers through frozen weights: FrozenWeight::make/prepack, linear_forward and
// linear_backward_input for F32 (dnnl_sgemm), F64 (gemm<double>) and BF16 weights (zerolora's AMX
// kernels where the CPU has AMX (amx_gemm.h), else oneDNN's bf16 matmul with primitives cached by shape,
// or the portable widen-and-sgemm path; see onednn.h).
#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/amx_gemm.h"
#include "kernels/cpu/common.h"
#include "kernels/cpu/onednn.h"
#include "kernels/nf4.h"
#include "kernels/kernels.h"
#include "kernels/nf4.h"

namespace zerolora::kernels {

using dnnl::memory;
using core::DType;

struct PackedWeight {
  memory::desc desc;  // W^T as a {K, N} matrix in oneDNN's blocked layout
  memory::data_type dt;
  std::shared_ptr<std::byte> data;
};

namespace cpu {

dnnl::engine& dnnl_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::stream& dnnl_stream() {
  static dnnl::stream s(dnnl_engine());
  return s;
}

bool bf16_native_available() {
  static const bool available = [] {
    try {
      memory::desc a({32, 32}, memory::data_type::bf16, memory::format_tag::ab);
      memory::desc b({32, 32}, memory::data_type::bf16, memory::format_tag::ba);
      memory::desc c({32, 32}, memory::data_type::f32, memory::format_tag::ab);
      dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), dnnl_engine());
      return std::string(pd.impl_info_str()).rfind("ref", 0) != 0;  // the reference kernel is far too slow
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return available;
}

static std::atomic<bool> g_force_portable{false};
void set_bf16_force_portable(bool on) { g_force_portable = on; }
bool bf16_use_native() { return !g_force_portable && bf16_native_available(); }

static std::atomic<bool> g_pack_plain{false};
void set_prepack_even_if_plain(bool on) { g_pack_plain = on; }

PortableTiling& portable_tiling() {
  static PortableTiling t;
  return t;
}

}  // namespace cpu

namespace {

// ---- oneDNN matmul primitives, cached by shape ------------------------------------------------

enum class Op { Forward, BackwardInput };

struct CachedMatmul {
  Op op;
  memory::data_type dt;
  int64_t M, N, K;
  bool packed;
  memory::desc wdesc;
  bool ok;  // false: oneDNN has no kernel for this combination (use the plain path)
  dnnl::matmul prim;
};

// One lock for the primitive cache and the stream: a oneDNN call holds it throughout (its kernels use
// every thread anyway). Scratch buffers are the calling thread's own (thread_local), not shared.
std::mutex g_mutex;
std::deque<CachedMatmul> g_cache;  // deque: references stay valid across push_back

// Rows from which the AMX kernels take a bf16 linear (below: oneDNN). They work on blocks of 32 rows, so
// fewer rows pay for padding (decoding one token: M = 1).
constexpr int64_t kAmxMinRows = 32;

// Forward: dst[M,N] = src[M,K] x W^T, W^T viewed as {K,N} (plain: tag ba of W [N,K], or packed).
// BackwardInput: dst[M,K] += src[M,N] x W, W viewed as {N,K} tag ab (sum post-op).
const CachedMatmul& get_matmul(Op op, memory::data_type dt, int64_t M, int64_t N, int64_t K,
                               const PackedWeight* packed) {
  memory::desc wdesc = packed ? packed->desc
                       : op == Op::Forward
                           ? memory::desc({K, N}, dt, memory::format_tag::ba)
                           : memory::desc({N, K}, dt, memory::format_tag::ab);
  for (const auto& c : g_cache)
    if (c.op == op && c.dt == dt && c.M == M && c.N == N && c.K == K && c.packed == (packed != nullptr) &&
        c.wdesc == wdesc)
      return c;
  if (g_cache.size() >= 512) g_cache.clear();  // many distinct M values: start over
  CachedMatmul c{op, dt, M, N, K, packed != nullptr, wdesc, false, {}};
  int64_t in_w = op == Op::Forward ? K : N, out_w = op == Op::Forward ? N : K;
  try {
    memory::desc src({M, in_w}, dt, memory::format_tag::ab);
    memory::desc dst({M, out_w}, memory::data_type::f32, memory::format_tag::ab);
    dnnl::primitive_attr attr;
    if (op == Op::BackwardInput) {
      dnnl::post_ops po;
      po.append_sum(1.0f);
      attr.set_post_ops(po);
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wdesc, dst), attr, cpu::dnnl_engine());
    c.prim = dnnl::matmul(pd);
    c.ok = true;
  } catch (const dnnl::error&) {
    c.ok = false;
  }
  g_cache.push_back(std::move(c));
  return g_cache.back();
}

void run_matmul(const CachedMatmul& c, const void* src, const void* weights, float* dst) {
  int64_t in_w = c.op == Op::Forward ? c.K : c.N, out_w = c.op == Op::Forward ? c.N : c.K;
  auto& eng = cpu::dnnl_engine();
  memory s(memory::desc({c.M, in_w}, c.dt, memory::format_tag::ab), eng, const_cast<void*>(src));
  memory w(c.wdesc, eng, const_cast<void*>(weights));
  memory d(memory::desc({c.M, out_w}, memory::data_type::f32, memory::format_tag::ab), eng, dst);
  c.prim.execute(cpu::dnnl_stream(), {{DNNL_ARG_SRC, s}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, d}});
  cpu::dnnl_stream().wait();
}

template <typename S>
void add_bias(S* out, const S* bias, int64_t M, int64_t N) {
#pragma omp parallel for schedule(static) if (M * N > 65536)
  for (int64_t m = 0; m < M; ++m) {
    S* o = out + m * N;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) o[n] += bias[n];
  }
}

template <typename S>
void fill_bias(S* out, const S* bias, int64_t M, int64_t N) {
#pragma omp parallel for schedule(static) if (M * N > 65536)
  for (int64_t m = 0; m < M; ++m) std::copy(bias, bias + N, out + m * N);
}

// inp rows -> bf16 rounded, kept as f32 (portable path)
void round_rows_bf16(float* dst, const float* src, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) dst[i] = cpu::round_bf16(src[i]);
}

// ---- BF16 weights ------------------------------------------------------------------------------

// out[M,N] = bf16(inp) W^T, portable: weight row tiles widened to f32, then sgemm.
void bf16_forward_portable(float* out, const float* inp, const uint16_t* W, int64_t M, int64_t N, int64_t K,
                           float beta) {
  const auto& t = cpu::portable_tiling();
  int64_t mb = std::clamp<int64_t>(t.input_elems / std::max<int64_t>(K, 1), 1, M);
  int64_t nb = std::clamp<int64_t>(t.weight_elems / std::max<int64_t>(K, 1), 1, N);
  thread_local std::vector<float> f32_in, f32_w;
  f32_in.resize(size_t(mb * K));
  f32_w.resize(size_t(nb * K));
  float* A = f32_in.data();
  float* Wt = f32_w.data();
  for (int64_t m0 = 0; m0 < M; m0 += mb) {
    int64_t mc = std::min(mb, M - m0);
    round_rows_bf16(A, inp + m0 * K, mc * K);
    for (int64_t n0 = 0; n0 < N; n0 += nb) {
      int64_t nc = std::min(nb, N - n0);
      const uint16_t* src = W + n0 * K;
#pragma omp parallel for simd schedule(static) if (nc * K > 65536)
      for (int64_t i = 0; i < nc * K; ++i) Wt[i] = cpu::bf16_bits_to_f32(src[i]);
      gemm<float>(false, true, mc, nc, K, 1.0f, A, K, Wt, K, beta, out + m0 * N + n0, N);
    }
  }
}

// dinp[M,K] += bf16(dout) W, portable: weight column tiles widened to f32, then sgemm.
void bf16_backward_portable(float* dinp, const float* dout, const uint16_t* W, int64_t M, int64_t N,
                            int64_t K) {
  const auto& t = cpu::portable_tiling();
  int64_t mb = std::clamp<int64_t>(t.input_elems / std::max<int64_t>(N, 1), 1, M);
  int64_t kb = std::clamp<int64_t>(t.weight_elems / std::max<int64_t>(N, 1), 1, K);
  thread_local std::vector<float> f32_in, f32_w;
  f32_in.resize(size_t(mb * N));
  f32_w.resize(size_t(N * kb));
  float* A = f32_in.data();
  float* Wt = f32_w.data();
  for (int64_t m0 = 0; m0 < M; m0 += mb) {
    int64_t mc = std::min(mb, M - m0);
    round_rows_bf16(A, dout + m0 * N, mc * N);
    for (int64_t k0 = 0; k0 < K; k0 += kb) {
      int64_t kc = std::min(kb, K - k0);
#pragma omp parallel for schedule(static) if (N * kc > 65536)
      for (int64_t n = 0; n < N; ++n) {
        const uint16_t* src = W + n * K + k0;
        float* dst = Wt + n * kc;
#pragma omp simd
        for (int64_t j = 0; j < kc; ++j) dst[j] = cpu::bf16_bits_to_f32(src[j]);
      }
      gemm<float>(false, false, mc, kc, N, 1.0f, A, N, Wt, kc, 1.0f, dinp + m0 * K + k0, K);
    }
  }
}

void bf16_forward(float* out, const float* inp, const FrozenWeight& w, int64_t M) {
  const int64_t N = w.N, K = w.K;
  const uint16_t* W = w.weight.bits16();
  const float* bias = w.has_bias() ? w.bias.data<float>() : nullptr;
  if (M >= kAmxMinRows && cpu::bf16_use_native() && cpu::amx_gemm_in_use()) {
    cpu::amx_linear_forward(out, inp, W, M, N, K, false);
    if (bias) add_bias(out, bias, M, N);
    return;
  }
  if (cpu::bf16_use_native()) {
    std::lock_guard<std::mutex> lock(g_mutex);
    const PackedWeight* pw = w.packed && w.packed->dt == memory::data_type::bf16 ? w.packed.get() : nullptr;
    const CachedMatmul* c = &get_matmul(Op::Forward, memory::data_type::bf16, M, N, K, pw);
    if (!c->ok && pw) {
      pw = nullptr;
      c = &get_matmul(Op::Forward, memory::data_type::bf16, M, N, K, nullptr);
    }
    if (c->ok) {
      thread_local std::vector<uint16_t> bf16_in;
      bf16_in.resize(size_t(M * K));
      core::convert(inp, DType::F32, bf16_in.data(), DType::BF16, size_t(M * K));
      run_matmul(*c, bf16_in.data(), pw ? static_cast<const void*>(pw->data.get()) : W, out);
      if (bias) add_bias(out, bias, M, N);
      return;
    }
  }
  if (bias) fill_bias(out, bias, M, N);
  bf16_forward_portable(out, inp, W, M, N, K, bias ? 1.0f : 0.0f);
}

void bf16_backward_input(float* dinp, const float* dout, const FrozenWeight& w, int64_t M) {
  const int64_t N = w.N, K = w.K;
  const uint16_t* W = w.weight.bits16();
  if (M >= kAmxMinRows && cpu::bf16_use_native() && cpu::amx_gemm_in_use())
    return cpu::amx_linear_backward_input(dinp, dout, W, M, N, K);
  if (cpu::bf16_use_native()) {
    std::lock_guard<std::mutex> lock(g_mutex);
    const CachedMatmul& c = get_matmul(Op::BackwardInput, memory::data_type::bf16, M, N, K, nullptr);
    if (c.ok) {
      thread_local std::vector<uint16_t> bf16_in;
      bf16_in.resize(size_t(M * N));
      core::convert(dout, DType::F32, bf16_in.data(), DType::BF16, size_t(M * N));
      run_matmul(c, bf16_in.data(), W, dinp);
      return;
    }
  }
  bf16_backward_portable(dinp, dout, W, M, N, K);
}

// ---- F32 / F64 weights ---------------------------------------------------------------------------

// F32 weight with a prepacked copy: the oneDNN matmul on the blocked layout. False if no kernel.
bool f32_forward_packed(float* out, const float* inp, const FrozenWeight& w, int64_t M) {
  if (!w.packed || w.packed->dt != memory::data_type::f32) return false;
  std::lock_guard<std::mutex> lock(g_mutex);
  const CachedMatmul& c = get_matmul(Op::Forward, memory::data_type::f32, M, w.N, w.K, w.packed.get());
  if (!c.ok) return false;
  run_matmul(c, inp, w.packed->data.get(), out);
  if (w.has_bias()) add_bias(out, w.bias.data<float>(), M, w.N);
  return true;
}

template <typename S>
void check_types(const FrozenWeight& w, const char* fn) {
  DType d = w.weight.dtype();
  bool ok = std::is_same_v<S, double> ? d == DType::F64 : (d == DType::F32 || d == DType::BF16);
  core::check(ok, fn,
              std::string("a ") + core::dtype_name(d) + " weight cannot be used with " +
                  (std::is_same_v<S, double> ? "double" : "float") + " activations",
              "F32/BF16 weights take float activations, F64 weights double (tests)");
  core::check(w.weight.dim(0) == w.N && w.weight.dim(1) == w.K, fn, "FrozenWeight not built by make()");
}

}  // namespace

// ---- public ----------------------------------------------------------------------------------------

FrozenWeight FrozenWeight::make(core::Tensor weight, core::Tensor bias) {
  const char* where = "linear weight";
  core::check(weight.ndim() == 2, where,
              "expected a 2-D weight [out, in], got shape " + core::shape_str(weight.shape()));
  DType d = weight.dtype();
  core::check(d == DType::F32 || d == DType::F64 || d == DType::BF16, where,
              std::string("unsupported weight dtype ") + core::dtype_name(d),
              "convert the weight to F32 or BF16 at load");
  core::check(weight.numel() == 0 || weight.raw() != nullptr, where, "weight has no data");
  FrozenWeight w;
  w.N = weight.dim(0);
  w.K = weight.dim(1);
  if (bias.numel() > 0) {
    core::check(bias.ndim() == 1 && bias.dim(0) == w.N, where,
                "bias shape " + core::shape_str(bias.shape()) + " does not match the weight's " +
                    std::to_string(w.N) + " outputs");
    DType want = d == DType::F64 ? DType::F64 : DType::F32;
    core::check(bias.dtype() == want, where,
                std::string("bias dtype ") + core::dtype_name(bias.dtype()) + " with a " + core::dtype_name(d) +
                    " weight",
                std::string("convert the bias to ") + core::dtype_name(want) + " at load");
    w.bias = std::move(bias);
  }
  w.weight = std::move(weight);
  return w;
}

bool FrozenWeight::prepack(int64_t m_hint) {
  memory::data_type dt;
  if (weight.dtype() == DType::F32)
    dt = memory::data_type::f32;
  else if (weight.dtype() == DType::BF16 && cpu::bf16_native_available() && !cpu::amx_gemm_in_use())
    dt = memory::data_type::bf16;  // (the AMX kernels multiply the plain weight: a blocked copy would be unused)
  else
    return false;
  if (m_hint <= 0) m_hint = 2048;
  std::lock_guard<std::mutex> lock(g_mutex);
  try {
    auto& eng = cpu::dnnl_engine();
    memory::desc src({m_hint, K}, dt, memory::format_tag::ab);
    memory::desc wany({K, N}, dt, memory::format_tag::any);
    memory::desc dst({m_hint, N}, memory::data_type::f32, memory::format_tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wany, dst), eng);
    memory::desc wdesc = pd.weights_desc();
    if (wdesc.data.format_kind != dnnl_blocked ||
        (wdesc.data.format_desc.blocking.inner_nblks == 0 && !cpu::g_pack_plain))
      return false;  // the best kernel reads a plain layout: nothing to gain
    auto p = std::make_shared<PackedWeight>();
    p->desc = wdesc;
    p->dt = dt;
    p->data = core::alloc_aligned(wdesc.get_size());
    memory plain(memory::desc({K, N}, dt, memory::format_tag::ba), eng, weight.raw());
    memory blocked(wdesc, eng, p->data.get());
    dnnl::reorder(plain, blocked).execute(cpu::dnnl_stream(), plain, blocked);
    cpu::dnnl_stream().wait();
    packed = std::move(p);
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

FrozenWeight FrozenWeight::make_nf4(std::shared_ptr<const Nf4Weight> q) {
  core::check(q != nullptr, "linear weight", "empty NF4 weight");
  FrozenWeight w;
  w.N = q->N;
  w.K = q->K;
  w.nf4 = std::move(q);
  return w;
}

int64_t FrozenWeight::resident_bytes() const {
  int64_t n = int64_t(weight.nbytes() + bias.nbytes());
  if (nf4) n += nf4->storage_bytes() + int64_t(nf4->bias.size() * sizeof(float));
  return n;
}

// rows x cols activations rounded through IEEE half into a reused per-thread buffer (--fp16)
static const float* rounded_to_fp16(const float* x, int64_t n) {
  thread_local std::vector<float> buf;
  thread_local std::vector<uint16_t> half;
  buf.resize(size_t(n));
  half.resize(size_t(n));
  core::convert(x, DType::F32, half.data(), DType::F16, size_t(n));
  core::convert(half.data(), DType::F16, buf.data(), DType::F32, size_t(n));
  return buf.data();
}

template <typename S>
void linear_forward(S* out, const S* inp, const FrozenWeight& w, int64_t M) {
  if constexpr (std::is_same_v<S, float>) {
    if (w.nf4) return nf4_linear_forward(out, inp, *w.nf4, M, w.has_bias() ? w.bias.data<float>() : nullptr);
    if (w.fp16_inputs) inp = rounded_to_fp16(inp, M * w.K);
  }
  core::check(!w.nf4, "linear_forward", "an NF4 weight needs float activations");
  check_types<S>(w, "linear_forward");
  if (M <= 0 || w.N == 0) return;
  const int64_t N = w.N, K = w.K;
  if constexpr (std::is_same_v<S, float>) {
    if (w.weight.dtype() == DType::BF16) return bf16_forward(out, inp, w, M);
    if (f32_forward_packed(out, inp, w, M)) return;
  }
  if (w.has_bias()) fill_bias(out, w.bias.data<S>(), M, N);
  gemm<S>(false, true, M, N, K, S(1), inp, K, w.weight.data<S>(), K, S(w.has_bias() ? 1 : 0), out, N);
}

template <typename S>
void linear_backward_input(S* dinp, const S* dout, const FrozenWeight& w, int64_t M) {
  if constexpr (std::is_same_v<S, float>) {
    if (w.nf4) return nf4_linear_backward_input(dinp, dout, *w.nf4, M);
    if (w.fp16_inputs) dout = rounded_to_fp16(dout, M * w.N);
  }
  core::check(!w.nf4, "linear_backward_input", "an NF4 weight needs float activations");
  check_types<S>(w, "linear_backward_input");
  if (M <= 0 || w.K == 0 || w.N == 0) return;
  if constexpr (std::is_same_v<S, float>)
    if (w.weight.dtype() == DType::BF16) return bf16_backward_input(dinp, dout, w, M);
  gemm<S>(false, false, M, w.K, w.N, S(1), dout, w.N, w.weight.data<S>(), w.K, S(1), dinp, w.K);
}

template void linear_forward<float>(float*, const float*, const FrozenWeight&, int64_t);
template void linear_forward<double>(double*, const double*, const FrozenWeight&, int64_t);
template void linear_backward_input<float>(float*, const float*, const FrozenWeight&, int64_t);
template void linear_backward_input<double>(double*, const double*, const FrozenWeight&, int64_t);

}  // namespace zerolora::kernels
