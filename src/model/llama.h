// The LLaMA-family causal LM with LoRA: explicit forward and backward per block (DESIGN decision 1).
// Only LoRA A/B get weight gradients; frozen weights pass activation gradients only.
//
//   x0 = embed(ids)
//   per layer:  h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm(x)
//               x' = h + down(silu(gate(n2)) * up(n2)),                              n2 = rmsnorm(h)
//   loss = sum over targets of cross_entropy(lm_head(rmsnorm(x_L)))   (chunked: logits never all kept)
//
// The block itself (norms, projections with their LoRA branches, RoPE, attention, SwiGLU, residuals) is
// model/block.h, shared with the KV-cache decoder; this class owns the arena, the embedding, the final norm,
// the chunked lm_head + loss, and the order of the blocks (ZeRO-3 streaming, gradient-ready hooks).
//
// Activations live in one arena, reallocated whenever a micro-batch's (B, T) differs from the last one's: with
// --padding max_length every micro-batch has the same shape, so the step loop allocates nothing once warm; with
// --padding longest (or packing) T follows the batch, and each new shape reallocates (and zero-fills) the arena.
// With gradient checkpointing only each block's input is kept; a block's forward is recomputed in its
// backward.
//
// Device: the model runs where its kernels::Context says. On a CUDA context the weights must be the
// device copy (model::to_device), params/grads/logits are device pointers, the arena is device memory,
// and ModelInput stays host memory (uploaded at the start of each pass); the only copy back is the
// loss sums at the end of forward_backward.
#pragma once
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "model/block.h"
#include "model/lora.h"
#include "model/lora_linear.h"
#include "model/weight_stream.h"
#include "model/weights.h"
#include <functional>

namespace zerolora::model {

// One micro-batch. Right padding; labels are HF's (aligned with input_ids, -100 ignored); the model
// applies the causal shift (position t is scored against labels[t+1]).
struct ModelInput {
  int64_t B = 0, T = 0;
  const int32_t* input_ids = nullptr;  // [B*T]
  const int32_t* positions = nullptr;  // [B*T]; null: 0..T-1 in every row
  const int32_t* lengths = nullptr;    // [B]; null: all T
  const int32_t* kv_begin = nullptr;   // [B*T]; null: 0 (packing: start of the token's own sample)
  const int32_t* labels = nullptr;     // [B*T]; null: no loss
};

struct LossResult {
  double loss_sum = 0;  // summed token NLL
  int64_t tokens = 0;   // targets counted
};

// Rows of lm_head + cross-entropy per chunk on a GPU: 512 MiB of fp32 logits (4096 rows at Llama 2's vocab of
// 32000, 1046 at Llama 3's 128256), products large enough for the tensor cores; 1 GiB until 2026-12-07 (run 4),
// halved to lower the peak (the ~1 % lm_head + cross-entropy share of the step is what it can cost).
int64_t gpu_loss_chunk_rows(int64_t vocab_size);

struct TrainOptions {
  bool gradient_checkpointing = false;
  int64_t loss_chunk_rows = 256;  // rows of lm_head + cross-entropy per chunk (GPU: gpu_loss_chunk_rows)
  // With bf16 frozen weights, attention takes bf16 operands where the CPU has a native bf16 matmul
  // (kernels::AttentionShape::bf16: autocast's numerics, on AMX); false keeps it fp32 everywhere
  // (comparisons against the fp32 KV-cache decoder).
  bool bf16_attention = true;
};

// Accepts every span: Mistral/Qwen2 sliding-window attention is computed as the model defines it (each layer's
// window goes to the attention kernels, model/block.h). It used to refuse spans longer than sliding_window;
// train/trainer.cpp still calls it (that call can be deleted, then this function).
void check_attention_span(const io::HfConfig& config, int64_t span, const std::string& what, const std::string& fix);

template <typename S>
class LlamaModel {
 public:
  // weights must outlive the model; lora may be null (base model only).
  LlamaModel(const LlamaWeights& weights, const LoraLayout* lora, TrainOptions options = {},
             const kernels::Context& ctx = kernels::host());
  ~LlamaModel();

  // Logits for every position, [B*T, V]. params: the flat LoRA buffer (null = no adapter).
  void forward_logits(const ModelInput& in, const S* params, S* logits);

  // Loss (and, with grads != null, gradients of grad_scale * loss_sum added into grads).
  // dropout_seed selects the LoRA dropout masks (dropout only when grads != null and p > 0).
  LossResult forward_backward(const ModelInput& in, const S* params, S* grads, double grad_scale,
                              uint64_t dropout_seed);

  // ZeRO-3: take the embedding, blocks and lm_head from `stream` (gathered per part) instead of
  // weights(); null = all resident. weights() still supplies the config and the final norm.
  void set_weight_stream(FrozenWeightStream* stream) { stream_ = stream; }

  // Called during forward_backward with grads, each time the gradients of a suffix of the flat LoRA
  // buffer are final for this micro-batch: after the lm_head and after each block's backward, with the
  // offset where that suffix starts (layout order is forward order, so backward finishes it from the
  // end). A data-parallel trainer launches gradient buckets from here to overlap them with the rest
  // of the backward pass.
  void set_gradient_ready_hook(std::function<void(int64_t final_from)> hook) { grad_ready_ = std::move(hook); }

  // Bytes held by the activation arena right now.
  int64_t activation_bytes() const;
  // Bytes the arena will take for a B x T micro-batch (without allocating it).
  static int64_t estimate_activation_bytes(const io::HfConfig& config, const LoraLayout* lora,
                                           const TrainOptions& options, int64_t B, int64_t T);
  const LlamaWeights& weights() const { return w_; }
  const kernels::Context& context() const { return *ctx_; }

 private:
  struct Arena;
  struct ArenaPlan;
  static void plan_arena(Arena& a, std::vector<std::pair<S**, int64_t>>& plan, const io::HfConfig& c,
                         const LoraLayout* lora, const TrainOptions& opt, int64_t B, int64_t T);
  void forward_layers(const ModelInput& in, const S* params, bool training, uint64_t seed);
  void forward_layer(int l, const LayerWeights& W, const S* params, bool training, uint64_t seed);
  void backward_layer(int l, const LayerWeights& W, const S* params, S* grads, uint64_t seed);
  BlockTokens<S> block_tokens() const;
  BlockScratch<S> block_scratch() const;
  // The parts of the frozen model, resident or from the stream; release_part() after each use.
  const core::Tensor& embedding_part();
  const LayerWeights& layer_part(int l);
  const kernels::FrozenWeight& lm_head_part();
  void release_part();
  void report_gradients_final(int first_final_layer);  // -1: only the lm_head's
  void ensure_arena(int64_t B, int64_t T);
  LoraBranch lora_branch(int layer, Proj p, bool training, uint64_t seed) const;
  void ensure_rope(const ModelInput& in);
  // The pass's integer inputs where the kernels read them (host: the caller's arrays or the arena's
  // defaults; device: uploaded copies). Also the shifted targets when in.labels is set.
  struct Inputs {
    const int32_t *ids = nullptr, *positions = nullptr, *lengths = nullptr, *kv_begin = nullptr, *targets = nullptr;
  };
  void prepare_inputs(const ModelInput& in);
  // Attention in bf16 (kernels::AttentionShape::bf16) when the frozen weights are bf16 (--bf16, QLoRA's
  // bf16 compute), as autocast runs it, unless the options say fp32; fp32 otherwise.
  bool bf16_attention() const {
    return std::is_same_v<S, float> && w_.storage == core::DType::BF16 && opt_.bf16_attention;
  }

  const LlamaWeights& w_;
  Architecture arch_;
  const LoraLayout* lora_;
  TrainOptions opt_;
  std::unique_ptr<Arena> a_;
  const kernels::Context* ctx_;
  Inputs inputs_;
  std::vector<S> rope_;  // [max_pos, HD/2, 2]
  kernels::DeviceArray<S> rope_device_;  // its copy on a CUDA context
  const S* rope_table() const { return ctx_->on_cuda() ? rope_device_.data() : rope_.data(); }
  int64_t rope_positions_ = 0;
  FrozenWeightStream* stream_ = nullptr;
  std::function<void(int64_t)> grad_ready_;
};

}  // namespace zerolora::model
