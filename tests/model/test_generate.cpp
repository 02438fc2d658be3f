// KV-cache generation: the incremental path must give the full forward's logits; greedy decoding of the
// real stories260K model must reproduce its reference continuation; sampling must follow HF's
// temperature / top-k / top-p rules and be deterministic for a seed.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/runtime.h"
#include "kernels/cpu/onednn.h"
#include "model/generate.h"
#include "model/llama.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace zerolora;

namespace {

// Decoding these tiny models token by token is microseconds of work per step; on a loaded machine each
// thread wake-up (ours and oneDNN's) can cost milliseconds, so the loop-heavy tests run on one thread.
struct OneThread {
  int saved = core::num_threads();
  OneThread() { core::set_num_threads(1); }
  ~OneThread() { core::set_num_threads(saved); }
};

io::HfConfig tiny_config() {
  io::HfConfig c = model::preset_config("tiny");  // GQA 4/2, untied
  c.path = "<tiny>";
  return c;
}

model::LoraLayout all_targets_layout(const io::HfConfig& c) {
  model::LoraConfig lc;
  lc.r = 4;
  lc.alpha = 8;
  lc.dropout = 0.1;  // must be ignored at inference
  lc.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"};
  return model::LoraLayout(c, lc);
}

std::vector<int32_t> random_ids(int64_t T, int64_t V, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (auto& id : ids) id = int32_t(rng() % uint32_t(V));
  return ids;
}

// Feeds ids as: a prefill of `prefill` tokens, one chunk of 3, then one token at a time; returns the logits
// of every position, [T, V].
template <typename S>
std::vector<S> incremental_logits(model::KvCacheDecoder<S>& dec, const std::vector<int32_t>& ids, int64_t V,
                                  int64_t prefill) {
  const int64_t T = int64_t(ids.size());
  std::vector<S> logits(size_t(T * V));
  dec.reset();
  dec.feed(ids.data(), prefill, logits.data(), true);
  int64_t t = prefill;
  dec.feed(ids.data() + t, 3, logits.data() + t * V, true);
  t += 3;
  for (; t < T; ++t) dec.feed(ids.data() + t, 1, logits.data() + t * V, false);
  EXPECT_EQ(dec.length(), T);
  return logits;
}

template <typename S>
double max_diff(const std::vector<S>& a, const std::vector<S>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - double(b[i])));
  return d;
}

// tol is absolute for F32/F64 storage; for BF16 storage it is relative to the largest logit, because
// linear_forward rounds its input to bf16 there: a 1e-7 difference in accumulation order (flash attention
// over the whole sequence vs one query over the cache) can flip an input's bf16 rounding, a 0.4% step.
template <typename S>
void expect_cached_equals_full(core::DType storage, bool with_adapter, double tol, int64_t T = 23,
                               int64_t prefill = 6) {
  const io::HfConfig c = tiny_config();
  auto w = test::random_weights(c, core::dtype_of<S>(), storage, 5, 0.1);
  model::LoraLayout layout = all_targets_layout(c);
  std::vector<S> params = test::random_lora_params<S>(layout, 9, 0.1);
  const model::LoraLayout* lora = with_adapter ? &layout : nullptr;
  const S* p = with_adapter ? params.data() : nullptr;
  const int64_t V = c.vocab_size;
  const auto ids = random_ids(T, V, 11);

  // the decoder's attention is fp32; so is the full forward's here (with bf16 weights on a CPU with a
  // native bf16 matmul it would otherwise take bf16 operands: checked separately below)
  model::TrainOptions fp32_attention;
  fp32_attention.bf16_attention = false;
  model::LlamaModel<S> full(w, lora, fp32_attention);
  model::ModelInput in;
  in.B = 1, in.T = T, in.input_ids = ids.data();
  std::vector<S> want(size_t(T * V));
  full.forward_logits(in, p, want.data());

  double biggest = 0;
  for (S v : want) biggest = std::max(biggest, std::abs(double(v)));
  if (storage == core::DType::BF16) tol *= biggest;
  // the logits are not trivially small (the comparison would prove nothing)
  EXPECT_GT(biggest, 100 * tol);

  model::KvCacheDecoder<S> dec(w, lora, p);
  const auto got = incremental_logits(dec, ids, V, prefill);
  EXPECT_LE(max_diff(got, want), tol);
  // a reset decoder starts over: the same answer again, with a different split
  const auto again = incremental_logits(dec, ids, V, prefill + 3);
  EXPECT_LE(max_diff(again, want), tol);
  if (storage == core::DType::BF16) {
    // the default full forward: bf16 attention operands where native (2^-8 per operand), else the same fp32
    model::LlamaModel<S> autocast(w, lora);
    std::vector<S> bf16_att(size_t(T * V));
    autocast.forward_logits(in, p, bf16_att.data());
    EXPECT_LE(max_diff(bf16_att, want), 5e-2 * biggest);
    if (!kernels::cpu::bf16_native_available()) {
      EXPECT_EQ(bf16_att, want);
    }
  }
}

}  // namespace

TEST(KvCacheDecoder, MatchesFullForwardWithoutAdapter) { expect_cached_equals_full<float>(core::DType::F32, false, 1e-5); }

TEST(KvCacheDecoder, MatchesFullForwardWithAdapterOnEveryProjection) {
  expect_cached_equals_full<float>(core::DType::F32, true, 1e-5);
}

TEST(KvCacheDecoder, MatchesFullForwardAfterALongPrefillOnAllThreads) {
  // a prefill long enough for the cache attention to run on several threads
  expect_cached_equals_full<float>(core::DType::F32, true, 1e-5, 160, 150);
}

TEST(KvCacheDecoder, MatchesFullForwardInDoubleAndWithBf16Weights) {
  expect_cached_equals_full<double>(core::DType::F64, true, 1e-10);
  expect_cached_equals_full<float>(core::DType::BF16, true, 5e-3);
}

TEST(KvCacheDecoder, RejectsIdsOutsideTheVocabulary) {
  const io::HfConfig c = tiny_config();
  auto w = test::random_weights(c, core::DType::F32, core::DType::F32);
  model::KvCacheDecoder<float> dec(w, nullptr, nullptr);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  const int32_t bad = int32_t(c.vocab_size);
  EXPECT_THROW(dec.feed(&bad, 1, logits.data()), core::Error);
}

TEST(Generate, Stories260KGreedyContinuationMatchesReference) {
  OneThread one_thread;
  ZL_REQUIRE_SHARED(ref_path, "models/stories260K-hf/reference_outputs.json");
  std::ifstream f(ref_path);
  const auto j = nlohmann::json::parse(f);
  const auto prompt = j["input_ids"].get<std::vector<int32_t>>();
  const auto want = j["greedy_continuation_ids"].get<std::vector<int32_t>>();
  auto w = model::load_llama_weights(test::shared_path("models/stories260K-hf"), core::DType::F32, core::DType::F32);
  model::KvCacheDecoder<float> dec(w, nullptr, nullptr);
  model::GenerationOptions opt;
  opt.max_new_tokens = int64_t(want.size());
  opt.stop_ids = model::model_stop_ids(test::shared_path("models/stories260K-hf"), w.config);
  EXPECT_EQ(opt.stop_ids, std::vector<int32_t>{2});
  std::vector<int32_t> streamed;
  const auto r = model::generate<float>(dec, prompt, opt, [&](int32_t id) {
    streamed.push_back(id);
    return true;
  });
  EXPECT_EQ(r.tokens, want);
  EXPECT_EQ(streamed, want);
  EXPECT_EQ(r.stop_reason, "max_new_tokens");
}

TEST(Generate, TinyTopPTowardZeroIsGreedyAndSamplingIsSeeded) {
  OneThread one_thread;
  const io::HfConfig c = tiny_config();
  auto w = test::random_weights(c, core::DType::F32, core::DType::F32, 3, 0.1);
  model::KvCacheDecoder<float> dec(w, nullptr, nullptr);
  const std::vector<int32_t> prompt = {1, 40, 41, 42};
  model::GenerationOptions greedy;
  greedy.max_new_tokens = 24;
  const auto g = model::generate<float>(dec, prompt, greedy).tokens;
  ASSERT_EQ(g.size(), 24u);

  model::GenerationOptions nucleus = greedy;
  nucleus.sampling.temperature = 1.5;
  nucleus.sampling.top_p = 1e-9;
  nucleus.sampling.seed = 77;
  EXPECT_EQ(model::generate<float>(dec, prompt, nucleus).tokens, g);
  model::GenerationOptions top1 = greedy;
  top1.sampling.temperature = 2.0;
  top1.sampling.top_k = 1;
  EXPECT_EQ(model::generate<float>(dec, prompt, top1).tokens, g);

  model::GenerationOptions sample = greedy;
  sample.sampling.temperature = 1.0;
  sample.sampling.seed = 1234;
  const auto s1 = model::generate<float>(dec, prompt, sample).tokens;
  const auto s2 = model::generate<float>(dec, prompt, sample).tokens;
  EXPECT_EQ(s1, s2);
  sample.sampling.seed = 4321;
  const auto s3 = model::generate<float>(dec, prompt, sample).tokens;
  EXPECT_NE(s1, s3);  // near-uniform over 256 tokens: 24 equal draws by chance are impossible in practice
  EXPECT_NE(s1, g);
}

TEST(Generate, StopsAtStopIdsAndWhenTheCallbackSaysSo) {
  OneThread one_thread;
  const io::HfConfig c = tiny_config();
  auto w = test::random_weights(c, core::DType::F32, core::DType::F32, 3, 0.1);
  model::KvCacheDecoder<float> dec(w, nullptr, nullptr);
  const std::vector<int32_t> prompt = {1, 9};
  model::GenerationOptions opt;
  opt.max_new_tokens = 16;
  const auto g = model::generate<float>(dec, prompt, opt).tokens;
  // the first token whose first occurrence is at index >= 2 becomes a stop id
  size_t at = 2;
  while (at < g.size() && std::find(g.begin(), g.begin() + at, g[at]) != g.begin() + at) ++at;
  ASSERT_LT(at, g.size()) << "greedy output repeats from the start; pick another seed";
  opt.stop_ids = {g[at]};
  const auto stopped = model::generate<float>(dec, prompt, opt);
  EXPECT_EQ(stopped.stop_reason, "stop_token");
  EXPECT_EQ(stopped.tokens, std::vector<int32_t>(g.begin(), g.begin() + at + 1));  // stop token included

  opt.stop_ids.clear();
  int calls = 0;
  const auto cb = model::generate<float>(dec, prompt, opt, [&](int32_t) { return ++calls < 5; });
  EXPECT_EQ(cb.stop_reason, "callback");
  EXPECT_EQ(cb.tokens, std::vector<int32_t>(g.begin(), g.begin() + 5));

  opt.max_new_tokens = 0;
  EXPECT_TRUE(model::generate<float>(dec, prompt, opt).tokens.empty());
  EXPECT_THROW(model::generate<float>(dec, {}, opt), core::Error);
  opt.sampling.top_p = 0;
  EXPECT_THROW(model::generate<float>(dec, prompt, opt), core::Error);
}

TEST(Sampling, FollowsTemperatureTopKAndTopPLikeHf) {
  // probabilities 0.5, 0.3, 0.2 at temperature 1 (token 3 never: -inf-ish)
  const std::vector<float> logits = {std::log(0.3f), std::log(0.5f), std::log(0.2f), -1e30f};
  auto frequencies = [&](model::SamplingOptions o) {
    std::mt19937_64 rng(o.seed);
    std::vector<double> count(4, 0);
    const int n = 40000;
    for (int i = 0; i < n; ++i) count[size_t(model::sample_next_token<float>(logits.data(), 4, o, rng))] += 1;
    for (auto& v : count) v /= n;
    return count;
  };
  model::SamplingOptions o;
  std::mt19937_64 rng(0);
  EXPECT_EQ(model::sample_next_token<float>(logits.data(), 4, o, rng), 1);  // greedy

  o.temperature = 1.0;
  auto f = frequencies(o);
  EXPECT_NEAR(f[0], 0.3, 0.01);
  EXPECT_NEAR(f[1], 0.5, 0.01);
  EXPECT_NEAR(f[2], 0.2, 0.01);
  EXPECT_EQ(f[3], 0.0);

  // HF TopP: sorted ascending [0.2, 0.3, 0.5], cumsum [0.2, 0.5, 1.0]; drop cumsum <= 1 - 0.6 -> drops 0.2
  o.top_p = 0.6;
  f = frequencies(o);
  EXPECT_EQ(f[2], 0.0);
  EXPECT_NEAR(f[1], 0.5 / 0.8, 0.01);
  EXPECT_NEAR(f[0], 0.3 / 0.8, 0.01);

  // top-k 2 keeps the two most likely; temperature 0.5 squares the odds: 0.5^2 : 0.3^2
  o.top_p = 1.0;
  o.top_k = 2;
  o.temperature = 0.5;
  f = frequencies(o);
  EXPECT_EQ(f[2], 0.0);
  EXPECT_NEAR(f[1], 0.25 / 0.34, 0.01);
}

TEST(Generate, StopIdsComeFromConfigAndGenerationConfig) {
  test::TempDir tmp;
  io::HfConfig c = tiny_config();
  c.eos_token_ids = {2};
  EXPECT_EQ(model::model_stop_ids(tmp.str(), c), std::vector<int32_t>{2});
  test::write_file(tmp / "generation_config.json", "{\"eos_token_id\": [2, 128009]}");
  EXPECT_EQ(model::model_stop_ids(tmp.str(), c), (std::vector<int32_t>{2, 128009}));
  test::write_file(tmp / "generation_config.json", "{\"eos_token_id\": 7}");
  EXPECT_EQ(model::model_stop_ids(tmp.str(), c), (std::vector<int32_t>{2, 7}));
}
