// One decoder block of the LLaMA family as free functions over explicit buffers (llm.c's layer_forward /
// layer_backward): the training model (LlamaModel) and the KV-cache decoder (KvCacheDecoder) both run it, so
// the block's math and its LoRA wiring exist once.
//
//   n1 = rmsnorm(x);  q, k, v = q_proj(n1), k_proj(n1), v_proj(n1)   (+ bias where the weights carry one)
//   q, k = rope(q), rope(k);  att = attention(q, k, v)                (causal, GQA, window of this layer)
//   h = x + o_proj(att);  n2 = rmsnorm(h);  out = h + down(silu(gate(n2)) * up(n2))
//
// Every projection goes through lora_linear (frozen GEMM + optional LoRA branch).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "io/hf_config.h"
#include "kernels/context.h"
#include "kernels/kernels.h"
#include "model/lora.h"
#include "model/lora_linear.h"
#include "model/weights.h"

namespace zerolora::model {

// An architecture's variation points, derived once from config.json: what the block (and the model around
// it) reads that differs between the LLaMA-family models zerolora runs. The rest is fixed because
// io::parse_hf_config refuses anything else: the norm is RMSNorm with weight w (x * rsqrt(mean(x^2) + eps) * w),
// the MLP is SwiGLU with silu. Biases are not a flag here: a projection has one exactly when its frozen weight
// carries it (FrozenWeight::bias: Qwen2's q/k/v, Llama's attention_bias), and lora_linear adds it.
struct Architecture {
  int64_t C = 0, NH = 0, NKV = 0, HD = 0, I = 0, V = 0, layers = 0;
  double norm_eps = 1e-6;
  // Per layer: keys a query sees with a sliding window, itself included (kernels::AttentionShape::window;
  // 0 = full causal attention). Mistral: every layer; Qwen2 with use_sliding_window: layers >= max_window_layers
  // (or as layer_types says).
  std::vector<int64_t> window;
  // RoPE inverse frequencies with the config's rope_theta and rope_scaling (model/rope.h).
  std::vector<double> rope_inv_freq;

  static Architecture of(const io::HfConfig& config);
};

// What one block's forward keeps for its backward, M rows each (shape letters as in kernels.h): norms' outputs
// and rstd, q/k/v after RoPE, attention output and lse, the residual midpoint, the MLP's gate/up/act, and the
// LoRA intermediates u[p] = drop(x) A^T per adapted projection (null when not adapted). The decoder, which has
// no backward, points several of them at one buffer.
//
// recompute_inputs: xn1, xn2 and act are not kept per layer but point at buffers every layer shares (xn1 and xn2
// may be one buffer), so they hold another layer's values when this block's backward runs. The backward then
// recomputes each one that an adapted projection's dA reads (rmsnorm of x / xmid with the same weights, silu(gate)
// * up: the same kernels on the same inputs, so the forward's exact values) and skips the rest; no other part of
// the backward reads them (a frozen linear's input gradient needs only W). This is the training model without
// gradient checkpointing (LlamaModel): 2 C + I of its ~6 C + 3 I activations per token and layer.
template <typename S>
struct BlockActivations {
  S *xn1 = nullptr, *rstd1 = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *att = nullptr, *lse = nullptr;
  S *xmid = nullptr, *xn2 = nullptr, *rstd2 = nullptr, *gate = nullptr, *up = nullptr, *act = nullptr;
  S* u[7] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  bool recompute_inputs = false;
};

// Scratch: tmp [M, C] for the forward; the gradient buffers for the backward (dxn [M, C], datt/dq [M, Q],
// dk/dv [M, KV], dact [M, I]; d gate and d up take the place of gate and up, see block_backward); LoRA's dropout
// and du scratch.
template <typename S>
struct BlockScratch {
  S* tmp = nullptr;
  S *dxn = nullptr, *datt = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr;
  S* dact = nullptr;
  LoraScratch<S> lora;
};

// The LoRA side of one block: each projection's branch (slot null: not adapted) and the flat parameter buffer.
template <typename S>
struct BlockLora {
  std::array<LoraBranch, 7> branch;
  const S* params = nullptr;
};

// The branch of projection p in layer l (layer -1: lm_head); empty when lora is null or p is not adapted.
// dropout: the adapter's dropout when training, else 0; seed selects the masks (lora_linear.h).
LoraBranch lora_branch(const LoraLayout* lora, int layer, Proj p, bool training, uint64_t seed);
template <typename S>
BlockLora<S> block_lora(const LoraLayout* lora, int layer, const S* params, bool training, uint64_t seed);

// Where the block's M token rows sit and what they attend to.
template <typename S>
struct BlockTokens {
  int64_t M = 0;
  const int32_t* positions = nullptr;  // [M] device/host as the context
  const S* rope = nullptr;             // cos/sin table [max_pos, HD/2, 2] (kernels::rope_table)
  // Whole sequences (training, evaluation): M = B*T rows; the block sets shape.window from the Architecture.
  kernels::AttentionShape shape{0, 0, 0, 0, 0};
  const int32_t* lengths = nullptr;
  const int32_t* kv_begin = nullptr;
  // Decoding: the M new tokens follow p0 cached ones; BlockActivations::k/v point at their rows of the caches,
  // which hold p0 + M rows [.., NKV, HD] after the block wrote them (in the context's memory, as every buffer).
  const S* k_cache = nullptr;
  const S* v_cache = nullptr;
  int64_t p0 = 0;
  bool decoding() const { return k_cache != nullptr; }
};

// out [M, C] = block(x [M, C]) of layer `layer`; fills a (everything the backward reads). out may alias x.
template <typename S>
void block_forward(const Architecture& arch, int layer, const LayerWeights& W, const BlockLora<S>& lora,
                   const BlockTokens<S>& tok, const S* x, S* out, BlockActivations<S>& a, BlockScratch<S>& scratch,
                   const kernels::Context& ctx = kernels::host());

// dres [M, C]: on entry d loss / d out, on return d loss / d x. LoRA gradients (+=) into grads (null: none).
// x and a as the forward left them (with gradient checkpointing: a recomputed forward's). The backward
// overwrites a.gate and a.up with their gradients (nothing reads them after SwiGLU's backward; saves two
// [M, I] buffers) and, with recompute_inputs, the shared xn1/xn2/act: a second backward needs a new forward.
template <typename S>
void block_backward(const Architecture& arch, int layer, const LayerWeights& W, const BlockLora<S>& lora, S* grads,
                    const BlockTokens<S>& tok, const S* x, const BlockActivations<S>& a, BlockScratch<S>& scratch,
                    S* dres, const kernels::Context& ctx = kernels::host());

}  // namespace zerolora::model
