// Text generation with a KV cache: the same math as LlamaModel's forward (the same block, model/block.h),
// run incrementally. A prompt is prefilled in one pass; each new token then costs one
// row through every layer plus attention over the cached keys and values, instead of a forward over
// the whole sequence.
//
//   per layer, for the n new tokens at positions p0 .. p0+n-1:
//     K_cache[p0 ..] = rope(k_proj(n1)),  V_cache[p0 ..] = v_proj(n1)          (post-RoPE K, as HF caches it)
//     att_t = softmax_s(q_t . K_s / sqrt(HD)) V_s  over s <= t                  (GQA: head h reads kv h/(NH/NKV))
//                                                   (sliding window W: over t - W < s <= t; the cache keeps all rows)
//
// Sampling follows HF generate's order: temperature, then top-k, then top-p (nucleus), then a draw from
// a seeded RNG; temperature 0 is greedy (argmax, lowest id on ties).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/context.h"
#include "model/block.h"
#include "model/lora.h"
#include "model/weights.h"

namespace zerolora::model {

template <typename S>
class KvCacheDecoder {
 public:
  // Runs on ctx's device (default: the host). weights: the host weights (on a CUDA context uploaded here once
  // with model::to_device, NF4 projections staying NF4 and dequantised on the GPU per GEMM; the host weights may
  // then go) or already their device copy on ctx (shared, not copied). lora_params: the flat LoRA buffer of
  // layout lora in host memory (null with lora == null: base model only); the host decoder reads it in place
  // (it must outlive the decoder), a CUDA decoder copies it to the device here.
  // Memory: the KV cache, the RoPE table and every per-token buffer are one allocation in ctx's memory, made
  // here for reserve_tokens positions and grown (cache rows copied over) only when a longer sequence or a
  // larger chunk of tokens needs it; generate() reserves the whole generation up front, so decoding token by
  // token allocates nothing.
  KvCacheDecoder(const LlamaWeights& weights, const LoraLayout* lora, const S* lora_params,
                 const kernels::Context& ctx = kernels::host(), int64_t reserve_tokens = 64);
  ~KvCacheDecoder();

  // Runs n tokens after the ones already cached (positions length() .. length()+n-1) and caches
  // their keys and values. logits receives [n, V] when all_positions, else [V] for the last token
  // only (lm_head runs only on the rows asked for). Token ids outside the vocabulary throw.
  // ids and logits are host memory on every context: a CUDA decoder uploads the n ids and positions and
  // reads back only the logit rows asked for (one row of V floats per generated token).
  void feed(const int32_t* ids, int64_t n, S* logits, bool all_positions = false);

  // Makes room for `tokens` cached positions and chunks of `rows` tokens per feed (one allocation at most).
  void reserve(int64_t tokens, int64_t rows = 1);

  int64_t length() const { return length_; }  // tokens cached so far
  void reset() { length_ = 0; }               // forget the cache (buffers are kept)
  int64_t cache_bytes() const;                // bytes held by the K/V cache now
  int64_t vocab_size() const { return w_->config.vocab_size; }
  int64_t max_positions() const { return w_->config.max_position_embeddings; }
  const kernels::Context& context() const { return *ctx_; }
  int64_t allocations() const { return allocations_; }  // times the buffers were (re)allocated
  int64_t buffer_bytes() const;                         // bytes of the one allocation now

 private:
  struct Arena;
  void ensure(int64_t tokens, int64_t rows, int64_t logit_rows);

  const kernels::Context* ctx_;
  LlamaWeights device_weights_;  // the decoder's own device copy (CUDA context given host weights)
  const LlamaWeights* w_;        // the weights it runs: the caller's or device_weights_
  Architecture arch_;
  const LoraLayout* lora_;
  const S* lora_params_;         // where the kernels read them (host: the caller's; CUDA: lora_device_)
  kernels::DeviceArray<S> lora_device_;
  std::vector<S> rope_;          // host table [capacity, HD/2, 2] (copied into the arena)
  std::vector<int32_t> positions_;  // host staging of the fed tokens' positions
  int64_t length_ = 0, allocations_ = 0;
  std::unique_ptr<Arena> a_;
};

struct SamplingOptions {
  double temperature = 0;  // 0: greedy
  double top_p = 1.0;      // keep the most likely tokens whose probabilities add up to top_p (1: off)
  int64_t top_k = 0;       // keep the k most likely tokens (0: off)
  uint64_t seed = 0;
};

// Picks the next token from one row of logits [V]. rng is advanced only when sampling (temperature > 0).
template <typename S>
int32_t sample_next_token(const S* logits, int64_t V, const SamplingOptions& options, std::mt19937_64& rng);

struct GenerationOptions {
  int64_t max_new_tokens = 128;
  SamplingOptions sampling;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these (EOS ids, ...)
};

// Called with each generated token as soon as it is picked (the stop token included); returning
// false ends generation after it.
using TokenCallback = std::function<bool(int32_t token)>;

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (the prompt excluded; a stop token that ended it included)
  std::string stop_reason;      // "stop_token" | "max_new_tokens" | "callback"
  double prefill_seconds = 0, decode_seconds = 0;
};

// Prefills prompt (which must be non-empty) into a reset decoder, then generates up to
// options.max_new_tokens tokens.
template <typename S>
GenerationResult generate(KvCacheDecoder<S>& decoder, const std::vector<int32_t>& prompt,
                          const GenerationOptions& options, const TokenCallback& on_token = nullptr);

// --device for generate and chat, as train's flag: "cpu" -> null (the host); "cuda" -> a context on GPU 0, or
// a one-line core::Error saying why there is none (no GPU visible, or a build without CUDA); "auto" -> GPU 0
// when the build has CUDA and a GPU is visible, else null. *chosen (when given) receives "cpu" or
// "cuda:0 (<GPU name>)" for the command's "device: ..." line. The context must outlive the decoder.
std::unique_ptr<kernels::CudaContext> open_generation_device(const std::string& device, std::string* chosen = nullptr);

// EOS ids of a model folder: config.json's eos_token_id(s) and generation_config.json's (Llama 3
// Instruct lists <|eot_id|> only there), without duplicates.
std::vector<int32_t> model_stop_ids(const std::string& model_dir, const io::HfConfig& config);

}  // namespace zerolora::model
