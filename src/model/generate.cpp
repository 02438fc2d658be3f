#include "model/generate.h"
#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/runtime.h"
#include "model/block.h"
#include "model/lora_linear.h"

namespace zerolora::model {

// Activations of the n tokens fed in one call (shape letters as in kernels.h); sized for the largest
// n seen, so decoding one token at a time allocates nothing.
template <typename S>
struct KvCacheDecoder<S>::Buffers {
  int64_t rows = 0;
  std::vector<S> x, xn, rstd, q, att, tmp, xmid, gate, up, act, u;
  std::vector<int32_t> positions;
  // The block's buffers over the ones above: without a backward, both norms share xn and rstd, and every
  // projection's LoRA intermediate shares u. k and v are set per layer to the cache rows of the new tokens.
  BlockActivations<S> block() {
    BlockActivations<S> a;
    a.xn1 = a.xn2 = xn.data();
    a.rstd1 = a.rstd2 = rstd.data();
    a.q = q.data();
    a.att = att.data();
    a.xmid = xmid.data();
    a.gate = gate.data();
    a.up = up.data();
    a.act = act.data();
    for (auto& p : a.u) p = u.data();
    return a;
  }
};

template <typename S>
KvCacheDecoder<S>::KvCacheDecoder(const LlamaWeights& weights, const LoraLayout* lora, const S* lora_params)
    : w_(weights), arch_(Architecture::of(weights.config)), lora_(lora), lora_params_(lora_params),
      b_(std::make_unique<Buffers>()) {
  core::check(core::dtype_of<S>() == weights.compute, "generate", "weights were prepared for another compute dtype");
  core::check((lora == nullptr) == (lora_params == nullptr), "generate",
              "a LoRA layout needs its parameters (and parameters need a layout)");
  k_cache_.resize(size_t(weights.config.num_hidden_layers));
  v_cache_.resize(size_t(weights.config.num_hidden_layers));
}

template <typename S>
KvCacheDecoder<S>::~KvCacheDecoder() = default;

template <typename S>
int64_t KvCacheDecoder<S>::cache_bytes() const {
  int64_t n = 0;
  for (size_t l = 0; l < k_cache_.size(); ++l) n += int64_t((k_cache_[l].size() + v_cache_[l].size()) * sizeof(S));
  return n;
}

// Grows the per-layer K/V caches (keeping what they hold) and the RoPE table to at least `tokens`
// positions; doubling keeps the number of regrowths logarithmic in the sequence length.
template <typename S>
void KvCacheDecoder<S>::ensure_capacity(int64_t tokens) {
  if (tokens <= capacity_) return;
  const auto& c = w_.config;
  const int64_t KV = c.num_key_value_heads * c.head_dim;
  const int64_t cap = std::max<int64_t>({tokens, 2 * capacity_, 64});
  for (size_t l = 0; l < k_cache_.size(); ++l) {
    k_cache_[l].resize(size_t(cap * KV));
    v_cache_[l].resize(size_t(cap * KV));
  }
  rope_.resize(size_t(cap * c.head_dim));
  kernels::rope_table<S>(rope_.data(), arch_.rope_inv_freq.data(), cap, c.head_dim);
  capacity_ = cap;
}

template <typename S>
void KvCacheDecoder<S>::ensure_rows(int64_t n) {
  Buffers& b = *b_;
  if (n <= b.rows) return;
  const auto& c = w_.config;
  const int64_t C = c.hidden_size, Q = c.num_attention_heads * c.head_dim, I = c.intermediate_size;
  const int64_t r = lora_ ? lora_->config().r : 0;
  for (auto* v : {&b.x, &b.xn, &b.tmp, &b.xmid}) v->assign(size_t(n * C), S(0));
  for (auto* v : {&b.q, &b.att}) v->assign(size_t(n * Q), S(0));
  for (auto* v : {&b.gate, &b.up, &b.act}) v->assign(size_t(n * I), S(0));
  b.rstd.assign(size_t(n), S(0));
  b.u.assign(size_t(n * r), S(0));
  b.positions.assign(size_t(n), 0);
  b.rows = n;
}

// The n new tokens through every block (model/block.h, as the training model runs it), each block's keys and
// values written straight into the cache rows p0 .. p0+n-1 and attended to with the cached ones
// (kernels::attention_decode, with the layer's sliding window); then the final norm and lm_head on the rows
// whose logits are wanted.
template <typename S>
void KvCacheDecoder<S>::feed(const int32_t* ids, int64_t n, S* logits, bool all_positions) {
  core::check(n > 0 && ids != nullptr, "generate", "no tokens to feed");
  const auto& c = w_.config;
  const int64_t C = c.hidden_size, KV = c.num_key_value_heads * c.head_dim, p0 = length_;
  ensure_capacity(p0 + n);
  ensure_rows(n);
  Buffers& b = *b_;
  for (int64_t i = 0; i < n; ++i) b.positions[size_t(i)] = int32_t(p0 + i);
  BlockActivations<S> a = b.block();
  BlockScratch<S> scratch;  // dropout is off and there is no backward: only tmp is used
  scratch.tmp = b.tmp.data();
  BlockTokens<S> tok;
  tok.M = n;
  tok.positions = b.positions.data();
  tok.rope = rope_.data();
  tok.p0 = p0;

  kernels::embedding_forward<S>(b.x.data(), ids, w_.embed, n);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    a.k = k_cache_[size_t(l)].data() + p0 * KV;
    a.v = v_cache_[size_t(l)].data() + p0 * KV;
    tok.k_cache = k_cache_[size_t(l)].data();
    tok.v_cache = v_cache_[size_t(l)].data();
    block_forward<S>(arch_, l, w_.layers[size_t(l)], block_lora<S>(lora_, l, lora_params_, false, 0), tok,
                     b.x.data(), b.x.data(), a, scratch);
  }
  length_ = p0 + n;

  // final norm and lm_head only on the rows whose logits are wanted
  const int64_t first = all_positions ? 0 : n - 1, rows = n - first;
  kernels::rmsnorm_forward<S>(b.xn.data(), b.rstd.data(), b.x.data() + first * C, w_.final_norm.data<S>(), rows, C,
                              arch_.norm_eps);
  lora_linear_forward<S>(logits, b.u.data(), b.xn.data(), w_.lm_head, lora_branch(lora_, -1, Proj::LmHead, false, 0),
                         lora_params_, LoraScratch<S>{}, rows);
}

template class KvCacheDecoder<float>;
template class KvCacheDecoder<double>;

// ---------------------------------------------------------------------------------------------
// Sampling

template <typename S>
int32_t sample_next_token(const S* logits, int64_t V, const SamplingOptions& o, std::mt19937_64& rng) {
  if (o.temperature <= 0) return int32_t(std::max_element(logits, logits + V) - logits);  // first maximum

  // Candidates in decreasing logit order (lower id first on ties, so p -> 0 picks what greedy picks).
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  auto before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  int64_t kept = V;
  if (o.top_k > 0 && o.top_k < V) {
    std::partial_sort(order.begin(), order.begin() + o.top_k, order.end(), before);
    kept = o.top_k;
  } else {
    std::sort(order.begin(), order.end(), before);
  }
  // softmax(logits / temperature) over the top-k survivors, as HF's TopP sees them
  std::vector<double> prob(static_cast<size_t>(kept));
  const double max_z = double(logits[order[0]]) / o.temperature;
  double total = 0;
  for (int64_t j = 0; j < kept; ++j) total += prob[size_t(j)] = std::exp(double(logits[order[size_t(j)]]) / o.temperature - max_z);
  // nucleus: token j stays while the mass of the tokens before it is below top_p (the first always stays)
  if (o.top_p < 1.0) {
    double before_mass = 0;
    int64_t j = 0;
    for (; j < kept; ++j) {
      if (j > 0 && before_mass >= o.top_p) break;
      before_mass += prob[size_t(j)] / total;
    }
    kept = j;
  }
  double kept_mass = 0;
  for (int64_t j = 0; j < kept; ++j) kept_mass += prob[size_t(j)];
  const double u = double(rng() >> 11) * (1.0 / 9007199254740992.0);  // [0, 1), same on every platform
  double target = u * kept_mass, run = 0;
  for (int64_t j = 0; j < kept; ++j) {
    run += prob[size_t(j)];
    if (target < run) return order[size_t(j)];
  }
  return order[size_t(kept - 1)];  // rounding left target at the very top
}

template int32_t sample_next_token<float>(const float*, int64_t, const SamplingOptions&, std::mt19937_64&);
template int32_t sample_next_token<double>(const double*, int64_t, const SamplingOptions&, std::mt19937_64&);

// ---------------------------------------------------------------------------------------------
// The generation loop

template <typename S>
GenerationResult generate(KvCacheDecoder<S>& decoder, const std::vector<int32_t>& prompt,
                          const GenerationOptions& options, const TokenCallback& on_token) {
  const SamplingOptions& s = options.sampling;
  core::check(!prompt.empty(), "generate", "the prompt is empty", "give at least one token (e.g. BOS)");
  core::check(options.max_new_tokens >= 0, "--max_new_tokens", "must be >= 0");
  core::check(s.temperature >= 0 && std::isfinite(s.temperature), "--temperature", "must be >= 0 (0: greedy)");
  core::check(s.top_p > 0 && s.top_p <= 1, "--top_p", "must be in (0, 1]");
  core::check(s.top_k >= 0, "--top_k", "must be >= 0 (0: off)");
  GenerationResult result;
  result.stop_reason = "max_new_tokens";
  decoder.reset();
  const int64_t V = decoder.vocab_size();
  std::vector<S> logits(static_cast<size_t>(V));
  std::mt19937_64 rng(s.seed);
  core::Timer timer;
  decoder.feed(prompt.data(), int64_t(prompt.size()), logits.data(), false);
  result.prefill_seconds = timer.seconds();
  timer.reset();
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    const int32_t token = sample_next_token<S>(logits.data(), V, s, rng);
    result.tokens.push_back(token);
    const bool go_on = !on_token || on_token(token);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) != options.stop_ids.end()) {
      result.stop_reason = "stop_token";
      break;
    }
    if (!go_on) {
      result.stop_reason = "callback";
      break;
    }
    if (step + 1 == options.max_new_tokens) break;  // the last token's logits are never needed
    decoder.feed(&token, 1, logits.data(), false);
  }
  result.decode_seconds = timer.seconds();
  return result;
}

template GenerationResult generate<float>(KvCacheDecoder<float>&, const std::vector<int32_t>&,
                                          const GenerationOptions&, const TokenCallback&);
template GenerationResult generate<double>(KvCacheDecoder<double>&, const std::vector<int32_t>&,
                                           const GenerationOptions&, const TokenCallback&);

std::vector<int32_t> model_stop_ids(const std::string& model_dir, const io::HfConfig& config) {
  std::vector<int32_t> ids;
  auto add = [&](int64_t id) {
    if (id >= 0 && std::find(ids.begin(), ids.end(), int32_t(id)) == ids.end()) ids.push_back(int32_t(id));
  };
  for (int64_t id : config.eos_token_ids) add(id);
  const auto path = std::filesystem::path(model_dir) / "generation_config.json";
  std::ifstream f(path);
  if (!f) return ids;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw core::Error(path.string(), std::string("is not valid JSON: ") + e.what());
  }
  const auto it = j.find("eos_token_id");
  if (it == j.end() || it->is_null()) return ids;
  if (it->is_number_integer()) {
    add(it->get<int64_t>());
  } else if (it->is_array()) {
    for (const auto& v : *it)
      if (v.is_number_integer()) add(v.get<int64_t>());
  }
  return ids;
}

}  // namespace zerolora::model
