#include "model/generate.h"
#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/runtime.h"
#include "model/block.h"
#include "model/lora_linear.h"

namespace zerolora::model {

// The decoder's one allocation, in the context's memory (shape letters as in kernels.h; L layers, P the cache
// capacity in positions, R the rows one feed may carry):
//   rope [P, HD/2, 2] | K cache [L, P, KV] | V cache [L, P, KV] | x, xn, tmp, xmid [R, C] | q, att [R, Q] |
//   gate, up, act [R, I] | rstd [R] | u [R, r] | logits [R_logits, V] (CUDA only) | ids, positions [R] (int32) |
//   with an embed_tokens adapter its scratch: A^T [V, r], u [R, r], the unit matrix [r, r]
// Without a backward, both norms share xn and rstd, and every projection's LoRA intermediate shares u; the
// block's k and v point at the cache rows of the new tokens.
template <typename S>
struct KvCacheDecoder<S>::Arena {
  std::shared_ptr<void> memory;
  int64_t bytes = 0, capacity = 0, rows = 0, logit_rows = 0;
  S *rope = nullptr, *k = nullptr, *v = nullptr;
  S *x = nullptr, *xn = nullptr, *tmp = nullptr, *xmid = nullptr, *q = nullptr, *att = nullptr;
  S *gate = nullptr, *up = nullptr, *act = nullptr, *rstd = nullptr, *u = nullptr, *logits = nullptr;
  int32_t *ids = nullptr, *positions = nullptr;
  S *emb_at = nullptr, *emb_u = nullptr, *eye = nullptr;
  BlockActivations<S> block() const {
    BlockActivations<S> a;
    a.xn1 = a.xn2 = xn;
    a.rstd1 = a.rstd2 = rstd;
    a.q = q;
    a.att = att;
    a.xmid = xmid;
    a.gate = gate;
    a.up = up;
    a.act = act;
    for (auto& p : a.u) p = u;
    return a;
  }
};

template <typename S>
KvCacheDecoder<S>::KvCacheDecoder(const LlamaWeights& weights, const LoraLayout* lora, const S* lora_params,
                                  const kernels::Context& ctx, int64_t reserve_tokens)
    : ctx_(&ctx), w_(&weights), arch_(Architecture::of(weights.config)), lora_(lora), lora_params_(lora_params),
      a_(std::make_unique<Arena>()) {
  core::check(core::dtype_of<S>() == weights.compute, "generate", "weights were prepared for another compute dtype");
  core::check((lora == nullptr) == (lora_params == nullptr), "generate",
              "a LoRA layout needs its parameters (and parameters need a layout)");
  const bool device_weights = weights.embed.device() == core::Device::Cuda;
  if (ctx.on_cuda()) {
    core::check(std::is_same_v<S, float>, "generate", "the CUDA decoder runs float models only");
    if (!device_weights) {
      device_weights_ = model::to_device(weights, ctx);
      w_ = &device_weights_;
    }
    if (lora) {
      lora_device_ = kernels::DeviceArray<S>(lora->numel(), ctx);
      kernels::copy_to_device(lora_device_.data(), lora_params, size_t(lora->numel()) * sizeof(S), ctx);
      lora_params_ = lora_device_.data();
    }
  } else {
    core::check(!device_weights, "generate", "the weights are a device copy but the decoder runs on the host",
                "pass the host weights, or a CUDA context");
  }
  ensure(std::max<int64_t>(reserve_tokens, 1), 1, 1);
}

template <typename S>
KvCacheDecoder<S>::~KvCacheDecoder() = default;

template <typename S>
int64_t KvCacheDecoder<S>::cache_bytes() const {
  return 2 * arch_.layers * a_->capacity * arch_.NKV * arch_.HD * int64_t(sizeof(S));
}

template <typename S>
int64_t KvCacheDecoder<S>::buffer_bytes() const {
  return a_->bytes;
}

template <typename S>
void KvCacheDecoder<S>::reserve(int64_t tokens, int64_t rows) {
  core::check(tokens >= 0 && rows >= 0, "generate", "negative reservation");
  ensure(tokens, rows, 1);
}

// Grows the allocation to at least `tokens` cached positions, `rows` tokens per feed and `logit_rows` rows of
// logits (CUDA), keeping the cached keys and values; capacity at least doubles, so regrowths are logarithmic
// in the sequence length. Nothing happens when everything fits.
template <typename S>
void KvCacheDecoder<S>::ensure(int64_t tokens, int64_t rows, int64_t logit_rows) {
  Arena& old = *a_;
  if (!ctx_->on_cuda()) logit_rows = 0;  // the host writes the caller's logits directly
  if (tokens <= old.capacity && rows <= old.rows && logit_rows <= old.logit_rows) return;
  const int64_t cap = tokens <= old.capacity ? old.capacity : std::max<int64_t>({tokens, 2 * old.capacity, 16});
  const int64_t R = std::max(rows, old.rows), RL = std::max(logit_rows, old.logit_rows);
  const int64_t L = arch_.layers, C = arch_.C, Q = arch_.NH * arch_.HD, KV = arch_.NKV * arch_.HD, I = arch_.I;
  const int64_t r = lora_ ? lora_->config().r : 0;

  auto fresh = std::make_unique<Arena>();
  Arena& a = *fresh;
  std::vector<std::pair<void**, int64_t>> plan;  // (pointer, bytes)
  auto add = [&](auto** p, int64_t elements, size_t size) {
    plan.push_back({reinterpret_cast<void**>(p), elements * int64_t(size)});
  };
  add(&a.rope, cap * arch_.HD, sizeof(S));
  add(&a.k, L * cap * KV, sizeof(S));
  add(&a.v, L * cap * KV, sizeof(S));
  for (S** p : {&a.x, &a.xn, &a.tmp, &a.xmid}) add(p, R * C, sizeof(S));
  for (S** p : {&a.q, &a.att}) add(p, R * Q, sizeof(S));
  for (S** p : {&a.gate, &a.up, &a.act}) add(p, R * I, sizeof(S));
  add(&a.rstd, R, sizeof(S));
  add(&a.u, R * r, sizeof(S));
  add(&a.logits, RL * arch_.V, sizeof(S));
  add(&a.ids, R, sizeof(int32_t));
  add(&a.positions, R, sizeof(int32_t));
  const LoraSlot* embed_slot = lora_ ? lora_->find(-1, Proj::Embed) : nullptr;
  const int64_t er = embed_slot ? embed_slot->r : 0;
  if (embed_slot) {
    add(&a.emb_at, embed_slot->in * er, sizeof(S));
    add(&a.emb_u, R * er, sizeof(S));
    add(&a.eye, er * er, sizeof(S));
  }
  int64_t total = 0;
  for (const auto& it : plan) total += (it.second + 255) / 256 * 256;  // 256-byte aligned buffers
  a.memory = kernels::device_alloc(size_t(total), *ctx_);
  a.bytes = total;
  char* base = static_cast<char*>(a.memory.get());
  int64_t off = 0;
  for (const auto& [p, bytes] : plan) {
    *p = bytes > 0 ? static_cast<void*>(base + off) : nullptr;
    off += (bytes + 255) / 256 * 256;
  }
  kernels::fill_zero<S>(reinterpret_cast<S*>(base), total / int64_t(sizeof(S)), *ctx_);
  a.capacity = cap, a.rows = R, a.logit_rows = RL;
  if (embed_slot) {
    std::vector<S> eye(size_t(er * er), S(0));
    for (int64_t i = 0; i < er; ++i) eye[size_t(i * er + i)] = S(1);
    kernels::copy_to_device(a.eye, eye.data(), eye.size() * sizeof(S), *ctx_);
  }
  // the cached rows move over, layer by layer (the capacity is each layer's stride)
  const size_t cached = size_t(length_ * KV) * sizeof(S);
  for (int64_t l = 0; l < L && length_ > 0; ++l) {
    kernels::copy_on_device(a.k + l * cap * KV, old.k + l * old.capacity * KV, cached, *ctx_);
    kernels::copy_on_device(a.v + l * cap * KV, old.v + l * old.capacity * KV, cached, *ctx_);
  }
  if (cap != old.capacity) {
    rope_.assign(size_t(cap * arch_.HD), S(0));
    kernels::rope_table<S>(rope_.data(), arch_.rope_inv_freq.data(), cap, arch_.HD);
  }
  kernels::copy_to_device(a.rope, rope_.data(), rope_.size() * sizeof(S), *ctx_);
  positions_.resize(size_t(R));
  a_ = std::move(fresh);  // the old buffers go once the copies from them are ordered before any later work
  ++allocations_;
}

// The n new tokens through every block (model/block.h, as the training model runs it), each block's keys and
// values written straight into the cache rows p0 .. p0+n-1 and attended to with the cached ones
// (kernels::attention_decode, with the layer's sliding window); then the final norm and lm_head on the rows
// whose logits are wanted.
template <typename S>
void KvCacheDecoder<S>::feed(const int32_t* ids, int64_t n, S* logits, bool all_positions) {
  core::check(n > 0 && ids != nullptr, "generate", "no tokens to feed");
  const kernels::Context& ctx = *ctx_;
  const LlamaWeights& w = *w_;
  const int64_t C = arch_.C, KV = arch_.NKV * arch_.HD, V = arch_.V, p0 = length_;
  const int64_t first = all_positions ? 0 : n - 1, rows = n - first;
  ensure(p0 + n, n, rows);
  Arena& b = *a_;
  for (int64_t i = 0; i < n; ++i) positions_[size_t(i)] = int32_t(p0 + i);
  const int32_t* dev_ids = ids;
  const int32_t* dev_positions = positions_.data();
  if (ctx.on_cuda()) {
    // the CPU embedding checks ids as it reads them; the device one cannot throw, so check here
    for (int64_t i = 0; i < n; ++i)
      core::check(ids[i] >= 0 && ids[i] < V, "embedding",
                  "token id " + std::to_string(ids[i]) + " at position " + std::to_string(p0 + i) +
                      " is outside the vocabulary [0, " + std::to_string(V) + ")",
                  "check the tokenizer matches the model");
    kernels::copy_to_device(b.ids, ids, size_t(n) * sizeof(int32_t), ctx);
    kernels::copy_to_device(b.positions, positions_.data(), size_t(n) * sizeof(int32_t), ctx);
    dev_ids = b.ids;
    dev_positions = b.positions;
  }
  BlockActivations<S> a = b.block();
  BlockScratch<S> scratch;  // dropout is off and there is no backward: only tmp is used
  scratch.tmp = b.tmp;
  BlockTokens<S> tok;
  tok.M = n;
  tok.positions = dev_positions;
  tok.rope = b.rope;
  tok.p0 = p0;

  kernels::embedding_forward<S>(b.x, dev_ids, w.embed, n, ctx);
  if (b.emb_at)  // embed_tokens' LoRA, its scratch in the decoder's allocation
    embedding_lora_forward<S>(b.x, dev_ids, lora_branch(lora_, -1, Proj::Embed, false, 0), lora_params_, b.emb_at,
                              b.emb_u, b.eye, n, ctx);
  for (int l = 0; l < arch_.layers; ++l) {
    S* k_cache = b.k + int64_t(l) * b.capacity * KV;
    S* v_cache = b.v + int64_t(l) * b.capacity * KV;
    a.k = k_cache + p0 * KV;
    a.v = v_cache + p0 * KV;
    tok.k_cache = k_cache;
    tok.v_cache = v_cache;
    block_forward<S>(arch_, l, w.layers[size_t(l)], block_lora<S>(lora_, l, lora_params_, false, 0), tok, b.x, b.x,
                     a, scratch, ctx);
  }
  length_ = p0 + n;

  // final norm and lm_head only on the rows whose logits are wanted
  kernels::rmsnorm_forward<S>(b.xn, b.rstd, b.x + first * C, w.final_norm.data<S>(), rows, C, arch_.norm_eps, ctx);
  S* out = ctx.on_cuda() ? b.logits : logits;
  lora_linear_forward<S>(out, b.u, b.xn, w.lm_head, lora_branch(lora_, -1, Proj::LmHead, false, 0), lora_params_,
                         LoraScratch<S>{}, rows, ctx);
  if (ctx.on_cuda()) kernels::copy_to_host(logits, out, size_t(rows * V) * sizeof(S), ctx);  // waits for the device
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
  // the whole generation in one allocation, capped at the model's context length and 8192 new positions (a
  // huge --max_new_tokens that a stop token ends early must not take its whole cache up front); longer runs
  // grow the cache by doubling
  const int64_t P = int64_t(prompt.size());
  const int64_t ahead = std::min({options.max_new_tokens, std::max<int64_t>(decoder.max_positions() - P, 0),
                                  int64_t(8192)});
  decoder.reserve(P + ahead, P);
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

std::unique_ptr<kernels::CudaContext> open_generation_device(const std::string& device, std::string* chosen) {
  if (chosen) *chosen = "cpu";
  core::check(device == "auto" || device == "cpu" || device == "cuda", "--device",
              "'" + device + "' is not one of auto, cpu, cuda", "pass --device auto, cpu or cuda");
  if (device == "cpu") return nullptr;
  if (kernels::cuda_device_count() == 0) {
    if (device == "auto") return nullptr;
    throw core::Error("--device cuda",
                      kernels::cuda_built() ? "no GPU is visible (" + kernels::cuda_devices_summary() + ")"
                                            : std::string("this zerolora was built without the CUDA backend"),
                      kernels::cuda_built()
                          ? "check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu"
                          : "rebuild with the CUDA toolkit installed (cmake -DZEROLORA_CUDA=ON), or use --device cpu");
  }
  auto gpu = std::make_unique<kernels::CudaContext>(0);
  if (chosen) *chosen = "cuda:" + std::to_string(gpu->index()) + " (" + gpu->name() + ")";
  return gpu;
}

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
