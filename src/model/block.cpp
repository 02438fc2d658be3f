#include "model/block.h"

#include <initializer_list>

#include "core/error.h"
#include "core/op_profile.h"
#include "model/rope.h"

namespace zerolora::model {

Architecture Architecture::of(const io::HfConfig& c) {
  Architecture a;
  a.C = c.hidden_size;
  a.NH = c.num_attention_heads;
  a.NKV = c.num_key_value_heads;
  a.HD = c.head_dim;
  a.I = c.intermediate_size;
  a.V = c.vocab_size;
  a.layers = c.num_hidden_layers;
  a.norm_eps = c.rms_norm_eps;
  a.window.assign(size_t(c.num_hidden_layers), 0);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) a.window[size_t(l)] = io::layer_sliding_window(c, l);
  a.rope_inv_freq = model::rope_inv_freq(c);
  return a;
}

LoraBranch lora_branch(const LoraLayout* lora, int layer, Proj p, bool training, uint64_t seed) {
  LoraBranch br;
  if (lora) br.slot = lora->find(layer, p);
  if (lora) br.bias = lora->find_bias(layer, p);  // --lora_bias: the bias from the flat buffer
  if (br.slot) {
    br.slot_index = int(br.slot - lora->slots().data());
    br.scale = lora->scale();
    br.dropout = training ? lora->config().dropout : 0.0;
    br.dropout_seed = seed;
  }
  return br;
}

template <typename S>
BlockLora<S> block_lora(const LoraLayout* lora, int layer, const S* params, bool training, uint64_t seed) {
  BlockLora<S> bl;
  bl.params = params;
  for (int p = 0; p < 7; ++p) bl.branch[size_t(p)] = lora_branch(params ? lora : nullptr, layer, Proj(p), training, seed);
  return bl;
}

namespace {
template <typename S>
kernels::AttentionShape layer_shape(const Architecture& arch, int layer, const BlockTokens<S>& tok) {
  kernels::AttentionShape shape = tok.shape;
  shape.window = arch.window[size_t(layer)];
  return shape;
}
}  // namespace

template <typename S>
void block_forward(const Architecture& arch, int layer, const LayerWeights& W, const BlockLora<S>& lora,
                   const BlockTokens<S>& tok, const S* x, S* out, BlockActivations<S>& a, BlockScratch<S>& scratch,
                   const kernels::Context& ctx) {
  const int64_t M = tok.M, C = arch.C, NH = arch.NH, NKV = arch.NKV, HD = arch.HD, I = arch.I;
  auto linear = [&](S* y, S* u, const S* in, Proj p) {
    lora_linear_forward<S>(y, u, in, W.proj[int(p)], lora.branch[size_t(p)], lora.params, scratch.lora, M, ctx);
  };
  { core::OpTimer t_(core::Op::Norm); kernels::rmsnorm_forward<S>(a.xn1, a.rstd1, x, W.input_norm.data<S>(), M, C, arch.norm_eps, ctx); }
  linear(a.q, a.u[0], a.xn1, Proj::Q);
  linear(a.k, a.u[1], a.xn1, Proj::K);
  linear(a.v, a.u[2], a.xn1, Proj::V);
  { core::OpTimer t_(core::Op::Rope); kernels::rope_forward<S>(a.q, tok.rope, tok.positions, M, NH, HD, ctx); }
  { core::OpTimer t_(core::Op::Rope); kernels::rope_forward<S>(a.k, tok.rope, tok.positions, M, NKV, HD, ctx); }
  {
    core::OpTimer t_(core::Op::Attention);
    if (tok.decoding()) {
      kernels::attention_decode<S>(a.att, a.q, tok.k_cache, tok.v_cache, M, tok.p0, NH, NKV, HD,
                                   arch.window[size_t(layer)], ctx);
    } else {
      kernels::attention_forward<S>(a.att, a.lse, a.q, a.k, a.v, layer_shape(arch, layer, tok), tok.lengths,
                                    tok.kv_begin, ctx);
    }
  }
  linear(scratch.tmp, a.u[3], a.att, Proj::O);
  { core::OpTimer t_(core::Op::Elementwise); kernels::add<S>(a.xmid, x, scratch.tmp, M * C, ctx); }
  { core::OpTimer t_(core::Op::Norm); kernels::rmsnorm_forward<S>(a.xn2, a.rstd2, a.xmid, W.post_norm.data<S>(), M, C, arch.norm_eps, ctx); }
  linear(a.gate, a.u[4], a.xn2, Proj::Gate);
  linear(a.up, a.u[5], a.xn2, Proj::Up);
  { core::OpTimer t_(core::Op::Swiglu); kernels::swiglu_forward<S>(a.act, a.gate, a.up, M * I, ctx); }
  linear(scratch.tmp, a.u[6], a.act, Proj::Down);
  { core::OpTimer t_(core::Op::Elementwise); kernels::add<S>(out, a.xmid, scratch.tmp, M * C, ctx); }
}

template <typename S>
void block_backward(const Architecture& arch, int layer, const LayerWeights& W, const BlockLora<S>& lora, S* grads,
                    const BlockTokens<S>& tok, const S* x, const BlockActivations<S>& a, BlockScratch<S>& s, S* dres,
                    const kernels::Context& ctx) {
  core::check(!tok.decoding(), "model", "the decoder's blocks have no backward");
  const int64_t M = tok.M, C = arch.C, NH = arch.NH, NKV = arch.NKV, HD = arch.HD, I = arch.I, Q = NH * HD;
  auto linear_back = [&](S* dx, const S* dy, const S* in, const S* u, Proj p) {
    lora_linear_backward<S>(dx, grads, dy, in, u, W.proj[int(p)], lora.branch[size_t(p)], lora.params, s.lora, M, ctx);
  };
  // With recompute_inputs, a projection input that an adapted projection's dA reads is computed again here
  // (rstd too: the same values into the same place); nothing else in the backward reads xn1, xn2 or act.
  auto reads_input = [&](std::initializer_list<Proj> ps) {
    if (!a.recompute_inputs || !grads) return false;
    for (Proj p : ps)
      if (lora.branch[size_t(p)].slot) return true;
    return false;
  };
  // MLP half: dres = d out (also d xmid through the residual)
  if (reads_input({Proj::Down})) {
    core::OpTimer t_(core::Op::Swiglu);
    kernels::swiglu_forward<S>(a.act, a.gate, a.up, M * I, ctx);
  }
  { core::OpTimer t_(core::Op::Elementwise); kernels::fill_zero<S>(s.dact, M * I, ctx); }
  linear_back(s.dact, dres, a.act, a.u[6], Proj::Down);
  // d gate and d up in place of gate and up: nothing reads those after this
  S* const dgate = a.gate;
  S* const dup = a.up;
  { core::OpTimer t_(core::Op::Swiglu); kernels::swiglu_backward<S>(dgate, dup, s.dact, a.gate, a.up, M * I, ctx); }
  if (reads_input({Proj::Gate, Proj::Up})) {
    core::OpTimer t_(core::Op::Norm);
    kernels::rmsnorm_forward<S>(a.xn2, a.rstd2, a.xmid, W.post_norm.data<S>(), M, C, arch.norm_eps, ctx);
  }
  { core::OpTimer t_(core::Op::Elementwise); kernels::fill_zero<S>(s.dxn, M * C, ctx); }
  linear_back(s.dxn, dgate, a.xn2, a.u[4], Proj::Gate);
  linear_back(s.dxn, dup, a.xn2, a.u[5], Proj::Up);
  { core::OpTimer t_(core::Op::Norm); kernels::rmsnorm_backward<S>(dres, s.dxn, a.xmid, W.post_norm.data<S>(), a.rstd2, M, C, ctx); }  // residual: +=

  // attention half: dres = d xmid (also d x through the residual)
  { core::OpTimer t_(core::Op::Elementwise); kernels::fill_zero<S>(s.datt, M * Q, ctx); }
  linear_back(s.datt, dres, a.att, a.u[3], Proj::O);
  {
    core::OpTimer t_(core::Op::AttentionBackward);
    kernels::attention_backward<S>(s.dq, s.dk, s.dv, s.datt, a.q, a.k, a.v, a.att, a.lse, layer_shape(arch, layer, tok),
                                   tok.lengths, tok.kv_begin, ctx);
  }
  { core::OpTimer t_(core::Op::Rope); kernels::rope_backward<S>(s.dq, tok.rope, tok.positions, M, NH, HD, ctx); }
  { core::OpTimer t_(core::Op::Rope); kernels::rope_backward<S>(s.dk, tok.rope, tok.positions, M, NKV, HD, ctx); }
  if (reads_input({Proj::Q, Proj::K, Proj::V})) {
    core::OpTimer t_(core::Op::Norm);
    kernels::rmsnorm_forward<S>(a.xn1, a.rstd1, x, W.input_norm.data<S>(), M, C, arch.norm_eps, ctx);
  }
  { core::OpTimer t_(core::Op::Elementwise); kernels::fill_zero<S>(s.dxn, M * C, ctx); }
  linear_back(s.dxn, s.dq, a.xn1, a.u[0], Proj::Q);
  linear_back(s.dxn, s.dk, a.xn1, a.u[1], Proj::K);
  linear_back(s.dxn, s.dv, a.xn1, a.u[2], Proj::V);
  { core::OpTimer t_(core::Op::Norm); kernels::rmsnorm_backward<S>(dres, s.dxn, x, W.input_norm.data<S>(), a.rstd1, M, C, ctx); }
}

#define ZL_INSTANTIATE(S)                                                                                          \
  template BlockLora<S> block_lora<S>(const LoraLayout*, int, const S*, bool, uint64_t);                          \
  template void block_forward<S>(const Architecture&, int, const LayerWeights&, const BlockLora<S>&,              \
                                 const BlockTokens<S>&, const S*, S*, BlockActivations<S>&, BlockScratch<S>&,      \
                                 const kernels::Context&);                                                          \
  template void block_backward<S>(const Architecture&, int, const LayerWeights&, const BlockLora<S>&, S*,          \
                                  const BlockTokens<S>&, const S*, const BlockActivations<S>&, BlockScratch<S>&, S*, \
                                  const kernels::Context&);
ZL_INSTANTIATE(float)
ZL_INSTANTIATE(double)
#undef ZL_INSTANTIATE

}  // namespace zerolora::model
