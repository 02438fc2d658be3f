// Record of an experiment (issue 19, 2026-12-07 (e)): oneDNN 3.2's bf16 matmul from PyPI's plain GNU-OpenMP build
// (onednn-cpu-gomp / onednn-devel-cpu-gomp 2023.2.0: libdnnl.so.3.2, needs only libgomp, unlike PyPI's 'onednn' 2026.1
// which is built for SYCL) on the frozen linears' shapes at M 512, bf16 inputs already rounded (no f32 conversion
// counted: an upper bound for it), plain weight and weight reordered to oneDNN's blocked 'any' layout. Not built by
// the project; bench/results/2026-12-07e-onednn32-matmul.sh fetches the wheels into /tmp, builds and runs it next
// to bench_cpu_matrix_units' AMX kernels (ours) and oneDNN 2.6, 1 thread.
#include <oneapi/dnnl/dnnl.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
using namespace dnnl;
using dt = memory::data_type;
static double now(){return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();}
int main(){
  engine eng(engine::kind::cpu,0); stream s(eng);
  const long M=512; long shapes[4][2]={{2048,2048},{256,2048},{5632,2048},{2048,5632}};
  for (int dir=0; dir<2; ++dir) for (auto& sh: shapes) for (int packed=0; packed<2; ++packed) {
    long N=sh[0], K=sh[1];
    // fwd: src [M,K] bf16, wei {K,N} from W[N,K] (strides 1,K), dst [M,N] f32
    // dX: src [M,N] bf16, wei {N,K} = W plain (strides K,1), dst [M,K] f32 (+= via sum)
    long Ki = dir==0?K:N, No = dir==0?N:K;
    memory::desc src({M,Ki}, dt::bf16, memory::format_tag::ab);
    memory::desc wplain = dir==0 ? memory::desc({Ki,No}, dt::bf16, memory::dims{1,Ki}) : memory::desc({Ki,No}, dt::bf16, memory::format_tag::ab);
    memory::desc wd = packed ? memory::desc({Ki,No}, dt::bf16, memory::format_tag::any) : wplain;
    memory::desc dst({M,No}, dt::f32, memory::format_tag::ab);
    primitive_attr attr; if (dir==1) { post_ops po; po.append_sum(1.f); attr.set_post_ops(po); }
    matmul::primitive_desc pd(eng, src, wd, dst, attr);
    std::vector<uint16_t> a(M*Ki), w(N*K); std::vector<float> c(M*No, 0.f);
    for (auto& v: a) v=0x3c00+(rand()&0x3ff)-512; for (auto& v: w) v=0x3c00+(rand()&0x3ff)-512;
    memory am(src,eng,a.data()), wm(wplain,eng,w.data()), cm(dst,eng,c.data());
    memory wuse = wm;
    if (packed) { wuse = memory(pd.weights_desc(), eng); reorder(wm, wuse).execute(s, wm, wuse); }
    matmul mm(pd);
    auto run=[&]{ mm.execute(s,{{DNNL_ARG_SRC,am},{DNNL_ARG_WEIGHTS,wuse},{DNNL_ARG_DST,cm}}); s.wait(); };
    run(); std::vector<double> ts; for(int r=0;r<7;++r){double t=now(); run(); ts.push_back(now()-t);} std::sort(ts.begin(),ts.end());
    printf("%s %5ldx%-5ld %-7s %-30s %7.0f GFLOP/s\n", dir==0?"fwd":"dX ", N, K, packed?"packed":"plain", pd.impl_info_str(), 2.0*M*N*K/ts[3]/1e9);
  }
}
