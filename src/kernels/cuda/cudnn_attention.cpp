// cuDNN 9's fused attention (SDPA) through the cuDNN frontend's graph API: one forward graph (out and the
// softmax statistics) and one backward graph (dq, dk, dv) per shape, built on first use and kept in the
// context (like the cuBLASLt plans in gemm.cu; llm.c's cudnn_att.cpp keeps its graphs the same way).
// Host code only: compiled by the C++ compiler against cudnn.h and the frontend's headers.
#include "kernels/cuda/cudnn_attention.h"

#include <cudnn.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

#define CUDNN_FRONTEND_SKIP_JSON_LIB 1
#include <cudnn_frontend.h>

namespace zerolora::kernels::cuda {

namespace {

namespace fe = cudnn_frontend;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

std::atomic<int64_t> g_executions{0};

// Everything a graph is built from: set_attn_scale(float) bakes the scale into the graph as a constant, so it
// is part of the key too (kernels.h fixes it at 1/sqrt(HD) today; the key must not rely on that).
struct Key {
  bool backward, padded;
  int64_t B, T, NH, NKV, HD, window;
  float scale;
  bool operator<(const Key& o) const {
    return std::tie(backward, padded, B, T, NH, NKV, HD, window, scale) <
           std::tie(o.backward, o.padded, o.B, o.T, o.NH, o.NKV, o.HD, o.window, o.scale);
  }
};

// One graph and the tensors its variant pack names. graph == nullptr: cuDNN refused the shape.
struct Entry {
  std::shared_ptr<fe::graph::Graph> graph;
  TensorPtr q, k, v, o, stats, dout, dq, dk, dv, seq_q, seq_kv;
  int64_t workspace = 0;
};

struct CudnnState {
  cudnnHandle_t handle = nullptr;
  std::string refused;  // why no handle could be made (then every call returns false)
  std::map<Key, Entry> graphs;
  ~CudnnState() {
    graphs.clear();  // the execution plans refer to the handle: they go first
    if (handle) cudnnDestroy(handle);
  }
};

// Graphs are built per sequence length; a run with many distinct lengths would otherwise keep them all.
constexpr size_t kMaxGraphs = 64;

CudnnState& state_of(CudaState& s) {
  if (!s.cudnn) {
    auto st = std::make_shared<CudnnState>();
    cudnnStatus_t e = cudnnCreate(&st->handle);
    if (e == CUDNN_STATUS_SUCCESS) e = cudnnSetStream(st->handle, s.stream);
    if (e != CUDNN_STATUS_SUCCESS) {
      st->refused = std::string("cudnnCreate: ") + cudnnGetErrorString(e);
      if (st->handle) cudnnDestroy(st->handle);
      st->handle = nullptr;
      std::fprintf(stderr, "zerolora: cuDNN attention unavailable (%s); using zerolora's attention kernels\n",
                   st->refused.c_str());
    }
    s.cudnn = st;
  }
  return *static_cast<CudnnState*>(s.cudnn.get());
}

fe::graph::Tensor_attributes bhtd(const char* name, int64_t B, int64_t H, int64_t T, int64_t HD) {
  // zerolora's [B, T, H, HD] seen as cuDNN's [B, H, T, HD]
  return fe::graph::Tensor_attributes().set_name(name).set_dim({B, H, T, HD}).set_stride({T * H * HD, HD, H * HD, 1});
}

TensorPtr stats_tensor(fe::graph::Graph& g, const Key& k) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name("stats")
                      .set_dim({k.B, k.NH, k.T, 1})
                      .set_stride({k.NH * k.T, k.T, 1, 1})
                      .set_data_type(fe::DataType_t::FLOAT));
}

TensorPtr seq_len_tensor(fe::graph::Graph& g, const char* name, int64_t B) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_dim({B, 1, 1, 1})
                      .set_stride({1, 1, 1, 1})
                      .set_data_type(fe::DataType_t::INT32));
}

// The masks both directions share: causal (top-left: queries and keys are the same positions), right padding,
// the sliding window's lower bound.
template <typename Attributes>
void set_masks(Attributes& a, Entry& e, fe::graph::Graph& g, const Key& k) {
  a.set_causal_mask(true);
  if (k.padded) {
    e.seq_q = seq_len_tensor(g, "seq_q", k.B);
    e.seq_kv = seq_len_tensor(g, "seq_kv", k.B);
    a.set_padding_mask(true).set_seq_len_q(e.seq_q).set_seq_len_kv(e.seq_kv);
  }
  if (k.window > 0) a.set_diagonal_band_left_bound(int(k.window));
}

std::shared_ptr<fe::graph::Graph> new_graph() {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

void define_forward(Entry& e, const Key& k) {
  auto& g = *e.graph;
  e.q = g.tensor(bhtd("q", k.B, k.NH, k.T, k.HD));
  e.k = g.tensor(bhtd("k", k.B, k.NKV, k.T, k.HD));
  e.v = g.tensor(bhtd("v", k.B, k.NKV, k.T, k.HD));
  auto a = fe::graph::SDPA_attributes().set_name("attention").set_generate_stats(true).set_attn_scale(k.scale);
  set_masks(a, e, g, k);
  auto [o, stats] = g.sdpa(e.q, e.k, e.v, a);
  const fe::graph::Tensor_attributes ol = bhtd("out", k.B, k.NH, k.T, k.HD);
  o->set_output(true).set_dim(ol.get_dim()).set_stride(ol.get_stride());
  stats->set_output(true).set_data_type(fe::DataType_t::FLOAT).set_dim({k.B, k.NH, k.T, 1}).set_stride(
      {k.NH * k.T, k.T, 1, 1});
  e.o = o;
  e.stats = stats;
}

void define_backward(Entry& e, const Key& k) {
  auto& g = *e.graph;
  e.q = g.tensor(bhtd("q", k.B, k.NH, k.T, k.HD));
  e.k = g.tensor(bhtd("k", k.B, k.NKV, k.T, k.HD));
  e.v = g.tensor(bhtd("v", k.B, k.NKV, k.T, k.HD));
  e.o = g.tensor(bhtd("out", k.B, k.NH, k.T, k.HD));
  e.dout = g.tensor(bhtd("dout", k.B, k.NH, k.T, k.HD));
  e.stats = stats_tensor(g, k);
  auto a = fe::graph::SDPA_backward_attributes().set_name("attention_backward").set_attn_scale(k.scale);
  set_masks(a, e, g, k);
  auto [dq, dk, dv] = g.sdpa_backward(e.q, e.k, e.v, e.o, e.dout, e.stats, a);
  const fe::graph::Tensor_attributes ql = bhtd("dq", k.B, k.NH, k.T, k.HD), kl = bhtd("dk", k.B, k.NKV, k.T, k.HD);
  dq->set_output(true).set_dim(ql.get_dim()).set_stride(ql.get_stride());
  dk->set_output(true).set_dim(kl.get_dim()).set_stride(kl.get_stride());
  dv->set_output(true).set_dim(kl.get_dim()).set_stride(kl.get_stride());
  e.dq = dq;
  e.dk = dk;
  e.dv = dv;
}

std::string describe(const Key& k) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s B %lld T %lld heads %lld/%lld HD %lld%s window %lld",
                k.backward ? "backward" : "forward", (long long)k.B, (long long)k.T, (long long)k.NH,
                (long long)k.NKV, (long long)k.HD, k.padded ? " padded" : "", (long long)k.window);
  return buf;
}

// The graph for this shape, built on first use; nullptr when cuDNN refuses it (said once per shape).
const Entry* entry_for(const Key& k, CudaState& s) {
  CudnnState& st = state_of(s);
  if (!st.handle) return nullptr;
  auto it = st.graphs.find(k);
  if (it != st.graphs.end()) return it->second.graph ? &it->second : nullptr;
  if (st.graphs.size() >= kMaxGraphs) {
    ZL_CUDA_CHECK(cudaStreamSynchronize(s.stream));  // no enqueued execution still refers to a plan
    st.graphs.clear();
  }
  Entry e;
  fe::error_t err;
  // Most refusals come back as error_t, but the frontend also throws: Graph::sdpa throws std::runtime_error when
  // no SDPA implementation accepts the attributes (graph_interface.h), its library shim when a symbol is missing.
  // Either way this is a refusal of the shape (nothing was enqueued yet), not an error mid-step.
  try {
    e.graph = new_graph();
    if (k.backward)
      define_backward(e, k);
    else
      define_forward(e, k);
    fe::graph::Graph& g = *e.graph;
    err = g.validate();
    if (err.is_good()) err = g.build_operation_graph(st.handle);
    if (err.is_good()) err = g.create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK});
    if (err.is_good()) err = g.check_support(st.handle);
    if (err.is_good()) err = g.build_plans(st.handle);
    if (err.is_good()) err = g.get_workspace_size(e.workspace);
  } catch (const std::exception& x) {
    err = fe::error_t(fe::error_code_t::GRAPH_NOT_SUPPORTED, std::string("exception: ") + x.what());
  }
  if (!err.is_good()) {
    std::fprintf(stderr, "zerolora: cuDNN attention refused %s (%s); using zerolora's attention kernels for it\n",
                 describe(k).c_str(), err.get_message().c_str());
    st.graphs.emplace(k, Entry{});
    return nullptr;
  }
  return &st.graphs.emplace(k, std::move(e)).first->second;
}

void execute(const Entry& e, std::unordered_map<TensorPtr, void*>& pack, const Key& k, CudaState& s) {
  void* ws = e.workspace > 0 ? scratch(s, Scratch::CudnnWorkspace, size_t(e.workspace)) : nullptr;
  fe::error_t err = e.graph->execute(state_of(s).handle, pack, ws);
  if (!err.is_good())
    throw core::Error("cuda attention", "cuDNN " + describe(k) + " failed: " + err.get_message(),
                      "rerun with ZEROLORA_CUDNN_SDPA=0 (zerolora's own attention kernels) and report this");
  ++g_executions;
}

Key key_of(bool backward, const int32_t* lengths, const SdpaShape& sh) {
  return Key{backward, lengths != nullptr, sh.B, sh.T, sh.NH, sh.NKV, sh.HD, sh.window, sh.scale};
}

}  // namespace

bool cudnn_attention_enabled() {
  const char* v = std::getenv("ZEROLORA_CUDNN_SDPA");
  return !(v && std::strcmp(v, "0") == 0);
}

bool cudnn_attention_forward(void* out, float* stats, const void* q, const void* k, const void* v,
                             const int32_t* lengths, const SdpaShape& shape, CudaState& s) {
  const Key key = key_of(false, lengths, shape);
  const Entry* e = entry_for(key, s);
  if (!e) return false;
  std::unordered_map<TensorPtr, void*> pack{{e->q, const_cast<void*>(q)}, {e->k, const_cast<void*>(k)},
                                            {e->v, const_cast<void*>(v)}, {e->o, out}, {e->stats, stats}};
  if (key.padded) {
    pack[e->seq_q] = const_cast<int32_t*>(lengths);
    pack[e->seq_kv] = const_cast<int32_t*>(lengths);
  }
  execute(*e, pack, key, s);
  return true;
}

bool cudnn_attention_backward(void* dq, void* dk, void* dv, const void* q, const void* k, const void* v,
                              const void* out, const void* dout, const float* stats, const int32_t* lengths,
                              const SdpaShape& shape, CudaState& s) {
  const Key key = key_of(true, lengths, shape);
  const Entry* e = entry_for(key, s);
  if (!e) return false;
  std::unordered_map<TensorPtr, void*> pack{
      {e->q, const_cast<void*>(q)},       {e->k, const_cast<void*>(k)},  {e->v, const_cast<void*>(v)},
      {e->o, const_cast<void*>(out)},     {e->dout, const_cast<void*>(dout)},
      {e->stats, const_cast<float*>(stats)}, {e->dq, dq},                {e->dk, dk},
      {e->dv, dv}};
  if (key.padded) {
    pack[e->seq_q] = const_cast<int32_t*>(lengths);
    pack[e->seq_kv] = const_cast<int32_t*>(lengths);
  }
  execute(*e, pack, key, s);
  return true;
}

int64_t cudnn_attention_executions() { return g_executions.load(); }

std::string cudnn_attention_version() {
  const size_t v = cudnnGetVersion();  // 9.19.0 = 91900
  char buf[96];
  std::snprintf(buf, sizeof buf, "cuDNN %zu.%zu.%zu, frontend %d.%d.%d", v / 10000, v / 100 % 100, v % 100,
                CUDNN_FRONTEND_MAJOR_VERSION, CUDNN_FRONTEND_MINOR_VERSION, CUDNN_FRONTEND_PATCH_VERSION);
  return buf;
}

}  // namespace zerolora::kernels::cuda
