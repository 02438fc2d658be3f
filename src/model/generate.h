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

#include "model/block.h"
#include "model/lora.h"
#include "model/weights.h"

namespace zerolora::model {

template <typename S>
class KvCacheDecoder {
 public:
  // weights (and lora / lora_params when given) must outlive the decoder. lora_params: the flat
  // LoRA buffer of layout lora (null with lora == null: base model only).
  KvCacheDecoder(const LlamaWeights& weights, const LoraLayout* lora, const S* lora_params);
  ~KvCacheDecoder();

  // Runs n tokens after the ones already cached (positions length() .. length()+n-1) and caches
  // their keys and values. logits receives [n, V] when all_positions, else [V] for the last token
  // only (lm_head runs only on the rows asked for). Token ids outside the vocabulary throw.
  void feed(const int32_t* ids, int64_t n, S* logits, bool all_positions = false);

  int64_t length() const { return length_; }  // tokens cached so far
  void reset() { length_ = 0; }               // forget the cache (buffers are kept)
  int64_t cache_bytes() const;                // bytes held by the K/V cache now
  int64_t vocab_size() const { return w_.config.vocab_size; }

 private:
  struct Buffers;
  void ensure_capacity(int64_t tokens);
  void ensure_rows(int64_t n);

  const LlamaWeights& w_;
  Architecture arch_;
  const LoraLayout* lora_;
  const S* lora_params_;
  std::vector<S> rope_;                       // [capacity, HD/2, 2]
  std::vector<std::vector<S>> k_cache_, v_cache_;  // per layer [capacity, NKV*HD]
  int64_t capacity_ = 0, length_ = 0;
  std::unique_ptr<Buffers> b_;
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

// EOS ids of a model folder: config.json's eos_token_id(s) and generation_config.json's (Llama 3
// Instruct lists <|eot_id|> only there), without duplicates.
std::vector<int32_t> model_stop_ids(const std::string& model_dir, const io::HfConfig& config);

}  // namespace zerolora::model
