#include "model/llama.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/op_profile.h"
#include "model/lora_linear.h"

namespace zerolora::model {

int64_t gpu_loss_chunk_rows(int64_t vocab_size) {
  return std::max<int64_t>(256, (int64_t(1) << 27) / std::max<int64_t>(vocab_size, 1));
}

void check_attention_span(const io::HfConfig&, int64_t, const std::string&, const std::string&) {
  // Every span is computed as the model defines it now (the attention kernels apply each layer's sliding
  // window, kernels::AttentionShape::window): nothing to refuse. Kept for train/trainer.cpp's call, which can go.
}

// Shapes: M = B*T rows, C hidden, Q = NH*HD, KV = NKV*HD, I intermediate, V vocab.
template <typename S>
struct LlamaModel<S>::Arena {
  using Layer = BlockActivations<S>;  // q/k/v/att/lse/..., LoRA intermediates u[p] (null when not adapted)
  int64_t B = 0, T = 0, M = 0;
  std::shared_ptr<void> memory;  // in the context's memory
  int64_t elements = 0;
  std::vector<S*> resid;          // L+1 block inputs/outputs [M, C]
  std::vector<Layer> layers;      // L sets (1 with gradient checkpointing)
  S *shared_xn = nullptr, *shared_act = nullptr;  // every layer's xn1/xn2 and act without checkpointing
  S *xf, *rstdf, *u_lm;           // final norm output, its rstd, lm_head LoRA intermediate
  S *tmp, *dres, *dxn, *datt, *dq, *dk, *dv, *dact;  // scratch
  S *lora_h, *lora_du, *logits;   // LoRA scratch, one chunk of logits
  S *ones = nullptr;              // [M] of 1.0: bias gradients (--lora_bias)
  S *emb_at = nullptr, *emb_u = nullptr, *identity = nullptr;  // embed_tokens LoRA: A^T [V, r], [M, r], I_r
  std::vector<int32_t> positions, lengths, targets;  // host: defaults and the shifted labels
  // CUDA context: the pass's integer inputs uploaded, and the loss sums (loss, count, bad target)
  kernels::DeviceArray<int32_t> ids_dev, positions_dev, lengths_dev, kv_begin_dev, targets_dev;
  kernels::DeviceArray<double> sums_dev;
  double sums_host[3] = {0, 0, 0};
};

template <typename S>
LlamaModel<S>::LlamaModel(const LlamaWeights& weights, const LoraLayout* lora, TrainOptions options,
                          const kernels::Context& ctx)
    : w_(weights), arch_(Architecture::of(weights.config)), lora_(lora), opt_(options), a_(std::make_unique<Arena>()),
      ctx_(&ctx) {
  core::check(!ctx.on_cuda() || std::is_same_v<S, float>, "model", "the CUDA backend runs float models only");
  core::check(!ctx.on_cuda() || weights.embed.device() == core::Device::Cuda || weights.embed.numel() == 0, "model",
              "a CUDA model needs the weights' device copy", "pass model::to_device(weights, ctx)");
  core::check(core::dtype_of<S>() == weights.compute, "model",
              "weights were prepared for another compute dtype");
}

template <typename S>
LlamaModel<S>::~LlamaModel() = default;

template <typename S>
int64_t LlamaModel<S>::activation_bytes() const {
  return a_->elements * int64_t(sizeof(S));
}

// The arena's buffers and their sizes, as (pointer to set, element count) pairs; shared by the
// allocation and the estimate so the two cannot drift apart.
template <typename S>
struct LlamaModel<S>::ArenaPlan {
  std::vector<std::pair<S**, int64_t>> items;
  int64_t total() const {
    int64_t n = 0;
    for (const auto& it : items) n += (it.second + 15) / 16 * 16;  // 64-byte aligned f32 buffers
    return n;
  }
};

template <typename S>
void LlamaModel<S>::ensure_arena(int64_t B, int64_t T) {
  Arena& a = *a_;
  if (a.B == B && a.T == T) return;
  ArenaPlan plan;
  plan_arena(a, plan.items, w_.config, lora_, opt_, B, T);
  a.memory.reset();  // the old arena goes before the new one is taken
  a.elements = plan.total();
  a.memory = kernels::device_alloc(size_t(a.elements) * sizeof(S), *ctx_);
  S* base = static_cast<S*>(a.memory.get());
  kernels::fill_zero<S>(base, a.elements, *ctx_);
  int64_t off = 0;
  for (auto& [ptr, n] : plan.items) {
    *ptr = base + off;
    off += (n + 15) / 16 * 16;
  }
  for (auto& l : a.layers)
    if (l.recompute_inputs) {
      l.xn1 = l.xn2 = a.shared_xn;
      l.act = a.shared_act;
    }
  const int64_t M = B * T;
  // constants of the arena: the ones vector (bias gradients) and the identity (embed_tokens LoRA's A^T)
  if (a.ones) {
    const std::vector<S> ones(size_t(M), S(1));
    kernels::copy_to_device(a.ones, ones.data(), ones.size() * sizeof(S), *ctx_);
  }
  if (a.identity) {
    const int64_t r = lora_->config().r;
    std::vector<S> eye(size_t(r * r), S(0));
    for (int64_t i = 0; i < r; ++i) eye[size_t(i * r + i)] = S(1);
    kernels::copy_to_device(a.identity, eye.data(), eye.size() * sizeof(S), *ctx_);
  }
  a.B = B;
  a.T = T;
  a.M = M;
  a.positions.resize(M);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) a.positions[b * T + t] = int32_t(t);
  a.lengths.assign(B, int32_t(T));
  a.targets.resize(M);
  if (ctx_->on_cuda()) {
    a.ids_dev = kernels::DeviceArray<int32_t>(M, *ctx_);
    a.positions_dev = kernels::DeviceArray<int32_t>(M, *ctx_);
    a.lengths_dev = kernels::DeviceArray<int32_t>(B, *ctx_);
    a.kv_begin_dev = kernels::DeviceArray<int32_t>(M, *ctx_);
    a.targets_dev = kernels::DeviceArray<int32_t>(M, *ctx_);
    if (a.sums_dev.size() == 0) a.sums_dev = kernels::DeviceArray<double>(3, *ctx_);
  }
}

template <typename S>
void LlamaModel<S>::prepare_inputs(const ModelInput& in) {
  Arena& a = *a_;
  const int64_t M = a.M, T = a.T;
  Inputs h;
  h.ids = in.input_ids;
  h.positions = in.positions ? in.positions : a.positions.data();
  h.lengths = in.lengths ? in.lengths : a.lengths.data();
  h.kv_begin = in.kv_begin;
  if (in.labels) {
    // causal shift: position t is scored against labels[t+1]; the last position of a row has no target
    for (int64_t m = 0; m < M; ++m) a.targets[m] = (m % T + 1 < T) ? in.labels[m + 1] : -100;
    h.targets = a.targets.data();
  }
  if (!ctx_->on_cuda()) {
    inputs_ = h;
    return;
  }
  // the CPU embedding checks ids as it reads them; the device one cannot throw, so check here
  const int64_t V = w_.config.vocab_size;
  for (int64_t m = 0; m < M; ++m)
    core::check(h.ids[m] >= 0 && h.ids[m] < V, "embedding",
                "token id " + std::to_string(h.ids[m]) + " at position " + std::to_string(m) +
                    " is outside the vocabulary [0, " + std::to_string(V) + ")",
                "check the tokenizer matches the model");
  auto up = [&](kernels::DeviceArray<int32_t>& d, const int32_t* src, int64_t n) -> const int32_t* {
    if (!src) return nullptr;
    kernels::copy_to_device(d.data(), src, size_t(n) * sizeof(int32_t), *ctx_);
    return d.data();
  };
  Inputs d;
  d.ids = up(a.ids_dev, h.ids, M);
  d.positions = up(a.positions_dev, h.positions, M);
  d.lengths = up(a.lengths_dev, h.lengths, a.B);
  d.kv_begin = up(a.kv_begin_dev, h.kv_begin, M);
  d.targets = up(a.targets_dev, h.targets, M);
  inputs_ = d;
}

template <typename S>
int64_t LlamaModel<S>::estimate_activation_bytes(const io::HfConfig& config, const LoraLayout* lora,
                                                 const TrainOptions& options, int64_t B, int64_t T) {
  Arena a;
  ArenaPlan plan;
  plan_arena(a, plan.items, config, lora, options, B, T);
  return plan.total() * int64_t(sizeof(S));
}

template <typename S>
void LlamaModel<S>::plan_arena(Arena& a, std::vector<std::pair<S**, int64_t>>& plan, const io::HfConfig& c,
                               const LoraLayout* lora, const TrainOptions& opt, int64_t B, int64_t T) {
  const int64_t M = B * T, C = c.hidden_size, Q = c.num_attention_heads * c.head_dim;
  const int64_t KV = c.num_key_value_heads * c.head_dim, I = c.intermediate_size, V = c.vocab_size;
  const int64_t L = c.num_hidden_layers, NH = c.num_attention_heads;
  const int64_t r = lora ? lora->config().r : 0;
  const int64_t chunk = std::min<int64_t>(opt.loss_chunk_rows, M);
  int64_t max_in = 0;  // the masked LoRA input (unfused dropout path): none without dropout
  if (lora && lora->config().dropout > 0)
    for (const auto& s : lora->slots())
      if (s.proj != Proj::Embed) max_in = std::max(max_in, s.in);  // embed_tokens' in is V; it has no dropout
  a.resid.assign(L + 1, nullptr);
  for (auto& p : a.resid) plan.push_back({&p, M * C});
  a.layers.assign(opt.gradient_checkpointing ? 1 : L, {});
  // Without checkpointing, the projections' inputs xn1, xn2 (one buffer) and act are shared by every layer and
  // recomputed in the backward where a LoRA dA reads them (BlockActivations::recompute_inputs): each layer keeps
  // ~4 C + 2 I floats per token instead of ~6 C + 3 I. With checkpointing the single set is the current layer's.
  const bool shared_inputs = !opt.gradient_checkpointing;
  if (shared_inputs) plan.insert(plan.end(), {{&a.shared_xn, M * C}, {&a.shared_act, M * I}});
  for (size_t li = 0; li < a.layers.size(); ++li) {
    auto& s = a.layers[li];
    plan.insert(plan.end(), {{&s.rstd1, M}, {&s.q, M * Q}, {&s.k, M * KV}, {&s.v, M * KV}, {&s.att, M * Q},
                             {&s.lse, B * NH * T}, {&s.xmid, M * C}, {&s.rstd2, M}, {&s.gate, M * I}, {&s.up, M * I}});
    s.recompute_inputs = shared_inputs;
    if (!shared_inputs) plan.insert(plan.end(), {{&s.xn1, M * C}, {&s.xn2, M * C}, {&s.act, M * I}});
    for (int p = 0; p < 7; ++p) {
      s.u[p] = nullptr;
      // with checkpointing the single set serves every layer: size it for any adapted projection
      bool adapted = false;
      if (lora) {
        if (opt.gradient_checkpointing) {
          for (int l = 0; l < L; ++l) adapted = adapted || lora->find(l, Proj(p));
        } else {
          adapted = lora->find(int(li), Proj(p)) != nullptr;
        }
      }
      if (adapted) plan.push_back({&s.u[p], M * r});
    }
  }
  a.u_lm = nullptr;
  plan.insert(plan.end(), {{&a.xf, M * C}, {&a.rstdf, M}});
  if (lora && lora->find(-1, Proj::LmHead)) plan.push_back({&a.u_lm, M * r});
  plan.insert(plan.end(), {{&a.tmp, M * C}, {&a.dres, M * C}, {&a.dxn, M * C}, {&a.datt, M * Q},
                           {&a.dq, M * Q}, {&a.dk, M * KV}, {&a.dv, M * KV}, {&a.dact, M * I},
                           {&a.lora_h, M * max_in}, {&a.lora_du, M * r},
                           {&a.logits, chunk * V}});
  a.ones = a.emb_at = a.emb_u = a.identity = nullptr;
  if (lora && !lora->bias_slots().empty()) plan.push_back({&a.ones, M});
  if (lora && lora->find(-1, Proj::Embed))
    plan.insert(plan.end(), {{&a.emb_at, V * r}, {&a.emb_u, M * r}, {&a.identity, r * r}});
}

template <typename S>
void LlamaModel<S>::ensure_rope(const ModelInput& in) {
  const int32_t* pos = in.positions ? in.positions : a_->positions.data();
  int64_t max_pos = 0;
  for (int64_t m = 0; m < in.B * in.T; ++m) {
    core::check(pos[m] >= 0, "model input", "negative position " + std::to_string(pos[m]));
    max_pos = std::max<int64_t>(max_pos, pos[m]);
  }
  if (max_pos < rope_positions_) return;
  const int64_t HD = w_.config.head_dim;
  const int64_t n = std::max<int64_t>({max_pos + 1, w_.config.max_position_embeddings, 2 * rope_positions_});
  rope_.resize(size_t(n * HD));
  kernels::rope_table<S>(rope_.data(), arch_.rope_inv_freq.data(), n, HD);
  rope_positions_ = n;
  if (ctx_->on_cuda()) {
    rope_device_ = kernels::DeviceArray<S>(n * HD, *ctx_);
    kernels::copy_to_device(rope_device_.data(), rope_.data(), rope_.size() * sizeof(S), *ctx_);
  }
}

// The LoRA branch of projection p in layer l (layer -1: lm_head); empty when it is not adapted.
template <typename S>
LoraBranch LlamaModel<S>::lora_branch(int l, Proj p, bool training, uint64_t seed) const {
  return model::lora_branch(lora_, l, p, training, seed);
}

template <typename S>
const core::Tensor& LlamaModel<S>::embedding_part() {
  return stream_ ? stream_->acquire_embedding() : w_.embed;
}
template <typename S>
const LayerWeights& LlamaModel<S>::layer_part(int l) {
  return stream_ ? stream_->acquire_layer(l) : w_.layers[size_t(l)];
}
template <typename S>
const kernels::FrozenWeight& LlamaModel<S>::lm_head_part() {
  return stream_ ? stream_->acquire_lm_head() : w_.lm_head;
}
template <typename S>
void LlamaModel<S>::release_part() {
  if (stream_) stream_->release();
}

// The flat LoRA buffer is in forward order (layer by layer, lm_head last), so once block l's backward
// is done every slot from block l's first one to the end is final.
// Bias slots sit after every LoRA slot, and each layer adds into them: with any, nothing is final before
// block 0's backward. embed_tokens' slot (first in the buffer) is final last, after the embedding's backward.
template <typename S>
void LlamaModel<S>::report_gradients_final(int first_final_layer) {
  if (!grad_ready_ || !lora_) return;
  if (!lora_->bias_slots().empty() && first_final_layer > 0) return;
  int64_t from = lora_->numel();
  for (const auto& s : lora_->slots())
    if (s.proj != Proj::Embed && (s.layer == -1 || s.layer >= first_final_layer))
      from = std::min({from, s.a_offset, s.b_offset});
  grad_ready_(from);
}

// The block's view of this pass: its rows, positions and RoPE table, and the attention's shape and masks.
template <typename S>
BlockTokens<S> LlamaModel<S>::block_tokens() const {
  const Arena& a = *a_;
  BlockTokens<S> tok;
  tok.M = a.M;
  tok.positions = inputs_.positions;
  tok.rope = rope_table();
  tok.shape = kernels::AttentionShape{a.B, a.T, arch_.NH, arch_.NKV, arch_.HD, bf16_attention()};
  tok.lengths = inputs_.lengths;
  tok.kv_begin = inputs_.kv_begin;
  return tok;
}

template <typename S>
BlockScratch<S> LlamaModel<S>::block_scratch() const {
  const Arena& a = *a_;
  return BlockScratch<S>{a.tmp, a.dxn, a.datt, a.dq, a.dk, a.dv, a.dact, {a.lora_h, a.lora_du, a.ones}};
}

template <typename S>
void LlamaModel<S>::forward_layer(int l, const LayerWeights& W, const S* params, bool training, uint64_t seed) {
  Arena& a = *a_;
  BlockScratch<S> scratch = block_scratch();
  block_forward<S>(arch_, l, W, block_lora<S>(lora_, l, params, training, seed), block_tokens(), a.resid[l],
                   a.resid[l + 1], a.layers[opt_.gradient_checkpointing ? 0 : l], scratch, *ctx_);
}

// a.dres holds d loss / d resid[l+1]; on return it holds d loss / d resid[l].
template <typename S>
void LlamaModel<S>::backward_layer(int l, const LayerWeights& W, const S* params, S* grads, uint64_t seed) {
  Arena& a = *a_;
  BlockScratch<S> scratch = block_scratch();
  block_backward<S>(arch_, l, W, block_lora<S>(lora_, l, params, true, seed), grads, block_tokens(), a.resid[l],
                    a.layers[opt_.gradient_checkpointing ? 0 : l], scratch, a.dres, *ctx_);
}

template <typename S>
void LlamaModel<S>::forward_layers(const ModelInput& in, const S* params, bool training, uint64_t seed) {
  core::check(in.B > 0 && in.T > 0 && in.input_ids, "model input", "empty batch");
  ensure_arena(in.B, in.T);
  ensure_rope(in);
  Arena& a = *a_;
  if (in.lengths)
    for (int64_t b = 0; b < in.B; ++b)
      core::check(in.lengths[b] >= 0 && in.lengths[b] <= in.T, "model input",
                  "row " + std::to_string(b) + " length " + std::to_string(in.lengths[b]) + " outside [0, T]");
  prepare_inputs(in);
  const core::Tensor& embed = embedding_part();
  {
    core::OpTimer t_(core::Op::Elementwise);
    kernels::embedding_forward<S>(a.resid[0], inputs_.ids, embed, a.M, *ctx_);
  }
  release_part();
  if (params && a.emb_at)
    embedding_lora_forward<S>(a.resid[0], inputs_.ids, lora_branch(-1, Proj::Embed, false, 0), params, a.emb_at,
                              a.emb_u, a.identity, a.M, *ctx_);
  for (int l = 0; l < w_.config.num_hidden_layers; ++l) {
    forward_layer(l, layer_part(l), params, training, seed);
    release_part();
  }
  {
    core::OpTimer t_(core::Op::Norm);
    kernels::rmsnorm_forward<S>(a.xf, a.rstdf, a.resid.back(), w_.final_norm.data<S>(), a.M, arch_.C, arch_.norm_eps,
                                *ctx_);
  }
}

template <typename S>
void LlamaModel<S>::forward_logits(const ModelInput& in, const S* params, S* logits) {
  if (stream_) stream_->begin_pass(false);
  forward_layers(in, params, false, 0);
  Arena& a = *a_;
  LoraBranch br = params ? lora_branch(-1, Proj::LmHead, false, 0) : LoraBranch{};
  lora_linear_forward<S>(logits, a.u_lm, a.xf, lm_head_part(), br, params, {a.lora_h, a.lora_du}, a.M, *ctx_);
  release_part();
  if (stream_) stream_->end_pass();
}

template <typename S>
LossResult LlamaModel<S>::forward_backward(const ModelInput& in, const S* params, S* grads, double grad_scale,
                                           uint64_t dropout_seed) {
  core::check(in.labels != nullptr, "model input", "labels are required for a loss");
  const bool training = grads != nullptr;
  if (stream_) stream_->begin_pass(training);
  forward_layers(in, params, training, dropout_seed);
  Arena& a = *a_;
  const auto& c = w_.config;
  const int64_t M = a.M, C = c.hidden_size, V = c.vocab_size;
  // loss sums (loss, counted rows, first bad target) accumulate where the kernels run; read once at the end
  double* sums = a.sums_host;
  if (ctx_->on_cuda()) {
    sums = a.sums_dev.data();
    kernels::fill_zero<double>(sums, 3, *ctx_);
  } else {
    sums[0] = sums[1] = sums[2] = 0;
  }

  const LoraBranch br = lora_branch(-1, Proj::LmHead, training, dropout_seed);
  LossResult result;
  if (training) kernels::fill_zero<S>(a.dxn, M * C, *ctx_);
  const kernels::FrozenWeight& lm_head = lm_head_part();
  for (int64_t r0 = 0; r0 < M; r0 += opt_.loss_chunk_rows) {
    const int64_t rows = std::min(opt_.loss_chunk_rows, M - r0);
    // rows whose targets are all ignored contribute nothing: skip their lm_head work
    bool any = false;
    for (int64_t m = r0; m < r0 + rows && !any; ++m) any = a.targets[m] != -100;
    if (!any) continue;
    // The LoRA branch sees row indices relative to the chunk; shift the dropout seed per chunk so masks
    // stay distinct across chunks (and identical between this forward and its backward).
    LoraBranch cbr = br;
    cbr.dropout_seed = dropout_seed + uint64_t(r0) * 0x9e3779b97f4a7c15ull;
    S* u = a.u_lm ? a.u_lm + r0 * lora_->config().r : nullptr;
    lora_linear_forward<S>(a.logits, u, a.xf + r0 * C, lm_head, cbr, params, {a.lora_h, a.lora_du}, rows, *ctx_);
    {
      core::OpTimer t_(core::Op::CrossEntropy);
      kernels::cross_entropy_accumulate<S>(a.logits, inputs_.targets + r0, rows, V, training ? grad_scale : 0.0, sums,
                                           *ctx_);
    }
    if (training)
      lora_linear_backward<S>(a.dxn + r0 * C, grads, a.logits, a.xf + r0 * C, u, lm_head, cbr, params,
                              {a.lora_h, a.lora_du}, rows, *ctx_);
  }
  release_part();
  double got[3] = {0, 0, 0};
  kernels::copy_to_host(got, sums, sizeof got, *ctx_);  // waits for the device; a plain copy on the host
  if (got[2] != 0) {
    const int64_t row = int64_t(got[2]) - 1;  // within its chunk: find it among the host targets
    for (int64_t m = 0; m < M; ++m)
      core::check(a.targets[m] == -100 || (a.targets[m] >= 0 && a.targets[m] < V), "cross_entropy",
                  "target " + std::to_string(a.targets[m]) + " at row " + std::to_string(m) +
                      " is outside the vocabulary [0, " + std::to_string(V) + ")",
                  "labels must be token ids or -100 (ignored)");
    core::check(false, "cross_entropy", "a target outside the vocabulary (chunk row " + std::to_string(row) + ")");
  }
  result.loss_sum = got[0];
  result.tokens = int64_t(got[1]);
  if (!training) {
    if (stream_) stream_->end_pass();
    return result;
  }
  report_gradients_final(c.num_hidden_layers);

  { core::OpTimer t_(core::Op::Elementwise); kernels::fill_zero<S>(a.dres, M * C, *ctx_); }
  { core::OpTimer t_(core::Op::Norm); kernels::rmsnorm_backward<S>(a.dres, a.dxn, a.resid.back(), w_.final_norm.data<S>(), a.rstdf, M, C, *ctx_); }
  for (int l = c.num_hidden_layers - 1; l >= 0; --l) {
    const LayerWeights& W = layer_part(l);
    if (opt_.gradient_checkpointing) forward_layer(l, W, params, true, dropout_seed);  // recompute
    backward_layer(l, W, params, grads, dropout_seed);
    release_part();
    report_gradients_final(l);
  }
  if (a.emb_at) {  // embed_tokens' LoRA: a.dres is d loss / d (embedding output)
    embedding_lora_backward<S>(grads, a.dres, inputs_.ids, lora_branch(-1, Proj::Embed, true, dropout_seed), params,
                               a.emb_u, a.lora_du, a.emb_at, a.identity, M, *ctx_);
    if (grad_ready_) grad_ready_(0);
  }
  if (stream_) stream_->end_pass();
  return result;
}

template class LlamaModel<float>;
template class LlamaModel<double>;

}  // namespace zerolora::model
