// The whole model on the GPU (kernels/cuda) against the same model on the CPU: loss, LoRA gradients and
// logits, for fp32, bf16 and NF4 frozen weights, with padding, packing, GQA, LoRA dropout and gradient
// checkpointing. Skipped (one line) where no GPU is visible.
// The KV-cache decoder on the GPU (CudaModelDecoder.*: inside scripts/gpu-check.sh's CudaModel* filter): its
// logits and greedy tokens against the CPU decoder (fp32, bf16 and NF4 weights, stories260K and a random GQA
// model with an adapter and a sliding window), against the GPU's own full forward, and its memory (one
// allocation, nothing per token). DecoderBuffers.* and GenerationDevice.* run on any machine.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iostream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "kernels/context.h"
#include "model/generate.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace zerolora;
using namespace zerolora::test;

namespace {

#define SKIP_WITHOUT_GPU() \
  if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no GPU visible: CUDA model test skipped"

struct Pass {
  model::LossResult loss;
  std::vector<float> grads, logits;
};

std::vector<float> download(const float* d, size_t n, const kernels::Context& ctx) {
  std::vector<float> h(n);
  kernels::copy_to_host(h.data(), d, n * sizeof(float), ctx);
  return h;
}

// forward_backward (grads of grad_scale * loss) then forward_logits, on the context's device.
Pass run(const model::LlamaWeights& host_weights, const model::LoraLayout& layout, const std::vector<float>& params,
         const model::ModelInput& in, model::TrainOptions opt, uint64_t seed, const kernels::Context& ctx) {
  const model::LlamaWeights dw = model::to_device(host_weights, ctx);
  const int64_t V = host_weights.config.vocab_size;
  kernels::DeviceArray<float> p(layout.numel(), ctx), g(layout.numel(), ctx), logits(in.B * in.T * V, ctx);
  kernels::copy_to_device(p.data(), params.data(), params.size() * sizeof(float), ctx);
  kernels::fill_zero<float>(g.data(), layout.numel(), ctx);
  model::LlamaModel<float> m(ctx.on_cuda() ? dw : host_weights, &layout, opt, ctx);
  Pass r;
  r.loss = m.forward_backward(in, p.data(), g.data(), 0.5, seed);
  m.forward_logits(in, p.data(), logits.data());
  r.grads = download(g.data(), size_t(layout.numel()), ctx);
  r.logits = download(logits.data(), size_t(in.B * in.T * V), ctx);
  return r;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::abs(x)));
  return m;
}

// max |a - b| / max |b|
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::abs(a[i] - b[i])));
  return d / std::max(max_abs(b), 1e-30);
}

struct Case {
  core::DType storage = core::DType::F32;
  bool nf4 = false, packing = false, checkpointing = false;
  double dropout = 0;
};

void compare(const Case& k, double tol_loss, double tol_grad, double tol_logits) {
  io::HfConfig c = model::preset_config("tiny");
  c.path = "<tiny>";
  c.num_hidden_layers = 3;
  c.tie_word_embeddings = false;
  model::RandomInit init;
  init.seed = 11, init.init_std = 0.08, init.jitter_norms = true;
  auto w = model::build_llama_weights(c, core::DType::F32, k.storage, model::random_tensor_source(init), k.nf4);
  model::LoraConfig lc;
  lc.r = 8, lc.dropout = k.dropout;
  lc.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  model::LoraLayout layout(c, lc);
  const auto params = random_lora_params<float>(layout, 3, 0.05);
  TestBatch batch = make_batch(45, 29, int32_t(c.vocab_size), 5);  // row 1 right-padded
  std::vector<int32_t> kv_begin, positions;
  model::ModelInput in = batch.input();
  if (k.packing) {  // row 0 holds two samples: 0..19 and 20..44
    kv_begin.assign(size_t(batch.B * batch.T), 0);
    positions.resize(kv_begin.size());
    for (int64_t r = 0; r < batch.B; ++r)
      for (int64_t t = 0; t < batch.T; ++t) {
        const bool second = r == 0 && t >= 20;
        kv_begin[size_t(r * batch.T + t)] = second ? 20 : 0;
        positions[size_t(r * batch.T + t)] = int32_t(second ? t - 20 : t);
      }
    in.kv_begin = kv_begin.data(), in.positions = positions.data();
  }
  model::TrainOptions opt;
  opt.gradient_checkpointing = k.checkpointing;
  opt.bf16_attention = false;  // the GPU's attention is fp32: compare with the CPU's fp32 attention
  opt.loss_chunk_rows = 32;    // several lm_head chunks (dropout seeds per chunk, skipped chunks)
  kernels::CudaContext gpu(0);
  const Pass cpu = run(w, layout, params, in, opt, 7, kernels::host());
  const Pass dev = run(w, layout, params, in, opt, 7, gpu.ctx());
  EXPECT_EQ(dev.loss.tokens, cpu.loss.tokens);
  EXPECT_NEAR(dev.loss.loss_sum, cpu.loss.loss_sum, tol_loss * std::abs(cpu.loss.loss_sum));
  EXPECT_LT(rel_diff(dev.grads, cpu.grads), tol_grad);
  EXPECT_LT(rel_diff(dev.logits, cpu.logits), tol_logits);
  EXPECT_GT(max_abs(cpu.grads), 0.0);
}

}  // namespace

// fp32 weights: both run fp32 products (cuBLASLt without TF32); only the summation order differs (GEMMs
// over K <= 2 * hidden, attention over <= 45 keys, reductions), each rounding ~1e-7 relative, amplified
// through 3 blocks and the backward: 1e-4 of the largest value bounds it with two orders to spare.
TEST(CudaModel, Fp32StepMatchesCpu) {
  SKIP_WITHOUT_GPU();
  compare({}, 1e-5, 1e-4, 1e-4);
}

TEST(CudaModel, Fp32PackedRowsMatchCpu) {
  SKIP_WITHOUT_GPU();
  Case k;
  k.packing = true;
  compare(k, 1e-5, 1e-4, 1e-4);
}

// Dropout masks are the same hash on both devices; checkpointing recomputes the same forward.
TEST(CudaModel, Fp32DropoutAndCheckpointingMatchCpu) {
  SKIP_WITHOUT_GPU();
  Case k;
  k.dropout = 0.1, k.checkpointing = true;
  compare(k, 1e-5, 1e-4, 1e-4);
}

// bf16 weights: both round every GEMM input to bf16 and accumulate in fp32. A value that lands on
// different sides of a bf16 rounding boundary (summation order) differs by one bf16 ulp (2^-8 relative)
// in the next GEMM's input; a few such flips per layer move outputs by well under 1 % of their range.
TEST(CudaModel, Bf16StepMatchesCpuUpToBf16Rounding) {
  SKIP_WITHOUT_GPU();
  Case k;
  k.storage = core::DType::BF16;
  compare(k, 1e-3, 2e-2, 1e-2);
}

// NF4 projections: the device dequantises bit-identically to the CPU (kernel test), then as bf16 above.
TEST(CudaModel, Nf4StepMatchesCpuUpToBf16Rounding) {
  SKIP_WITHOUT_GPU();
  Case k;
  k.storage = core::DType::BF16, k.nf4 = true;
  compare(k, 1e-3, 2e-2, 1e-2);
}

TEST(CudaModel, OutOfVocabularyIdIsAnErrorNotACrash) {
  SKIP_WITHOUT_GPU();
  io::HfConfig c = model::preset_config("tiny");
  c.path = "<tiny>";
  model::RandomInit init;
  auto w = model::build_llama_weights(c, core::DType::F32, core::DType::F32, model::random_tensor_source(init));
  kernels::CudaContext gpu(0);
  const auto dw = model::to_device(w, gpu.ctx());
  model::LlamaModel<float> m(dw, nullptr, {}, gpu.ctx());
  TestBatch batch = make_batch(8, 8, int32_t(c.vocab_size), 1);
  batch.ids[3] = int32_t(c.vocab_size);
  kernels::DeviceArray<float> logits(batch.B * batch.T * c.vocab_size, gpu.ctx());
  EXPECT_THROW(m.forward_logits(batch.input(), nullptr, logits.data()), core::Error);
}

// =============================================================================================================
// The KV-cache decoder on the GPU

namespace {

// 2 * tol * max|logit| below the best: a pair of logits the two devices may order differently
bool near_tie(const std::vector<float>& logits, double bound) {
  std::vector<float> top(logits);
  std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<float>());
  return double(top[0]) - double(top[1]) <= bound;
}

int32_t argmax(const std::vector<float>& logits) {
  return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

struct DecoderComparison {
  double worst = 0;          // max over steps of max |gpu - cpu| / max |cpu| of that step's logits
  int64_t near_ties = 0;     // steps whose CPU top two logits were within the bound
  int64_t argmax_diffs = 0;  // steps (not near ties) whose argmax differs
  double max_abs_diff = 0;       // max |gpu - cpu| over every logit compared
  std::vector<int32_t> tokens;    // the CPU's greedy tokens (fed to both)
  std::vector<double> gaps;       // the CPU's best minus second-best logit at each pick
  // The first pick the GPU could make differently: its gap is within 4x the largest deviation seen (2x: either
  // logit of the pair may move by the deviation; 2x more for generate()'s own GPU logits, which come from other
  // GEMM row counts than the ones compared). Greedy generation must agree before it.
  size_t first_tie() const {
    for (size_t s = 0; s < gaps.size(); ++s)
      if (gaps[s] <= 4 * max_abs_diff) return s;
    return gaps.size();
  }
};

double top_gap(const std::vector<float>& logits) {
  std::vector<float> top(logits);
  std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<float>());
  return double(top[0]) - double(top[1]);
}

// Prefills `prompt` into both decoders (logits of every prompt position compared), then `steps` tokens one at a
// time, each the CPU decoder's greedy pick fed to both (teacher forcing: one near tie cannot derail the rest).
DecoderComparison compare_decoders(model::KvCacheDecoder<float>& cpu, model::KvCacheDecoder<float>& gpu,
                                   const std::vector<int32_t>& prompt, int64_t steps, double tol) {
  const int64_t V = cpu.vocab_size(), P = int64_t(prompt.size());
  DecoderComparison r;
  std::vector<float> a(size_t(P * V)), b(size_t(P * V));
  cpu.reset(), gpu.reset();
  cpu.feed(prompt.data(), P, a.data(), true);
  gpu.feed(prompt.data(), P, b.data(), true);
  auto step_check = [&](const std::vector<float>& want, const std::vector<float>& got) {
    r.worst = std::max(r.worst, rel_diff(got, want));
    for (size_t v = 0; v < want.size(); ++v)
      r.max_abs_diff = std::max(r.max_abs_diff, std::abs(double(got[v]) - double(want[v])));
    if (near_tie(want, 2 * tol * max_abs(want))) {
      ++r.near_ties;
    } else if (argmax(got) != argmax(want)) {
      ++r.argmax_diffs;
    }
  };
  for (int64_t t = 0; t < P; ++t)
    step_check(std::vector<float>(a.begin() + t * V, a.begin() + (t + 1) * V),
               std::vector<float>(b.begin() + t * V, b.begin() + (t + 1) * V));
  std::vector<float> want(a.end() - V, a.end()), got(b.end() - V, b.end());
  for (int64_t s = 0; s < steps; ++s) {
    r.gaps.push_back(top_gap(want));
    const int32_t token = argmax(want);
    r.tokens.push_back(token);
    cpu.feed(&token, 1, want.data());
    gpu.feed(&token, 1, got.data());
    step_check(want, got);
  }
  EXPECT_EQ(gpu.length(), cpu.length());
  return r;
}

io::HfConfig windowed_tiny_config() {
  io::HfConfig c = model::preset_config("tiny");  // GQA 4/2
  c.path = "<tiny>";
  c.num_hidden_layers = 3;
  c.tie_word_embeddings = false;
  c.sliding_window = 9;  // Mistral style, every layer: 9 < the sequences below
  return c;
}

model::LoraLayout decoder_layout(const io::HfConfig& c) {
  model::LoraConfig lc;
  lc.r = 4, lc.alpha = 8, lc.dropout = 0.1;  // dropout must be off at inference on both devices
  lc.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"};
  return model::LoraLayout(c, lc);
}

std::vector<int32_t> random_prompt(int64_t n, int64_t V, uint64_t seed) {
  std::mt19937 rng{uint32_t(seed)};
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = int32_t(rng() % uint32_t(V));
  return ids;
}

void stories_decoder_matches_cpu(core::DType storage, double tol) {
  ZL_REQUIRE_SHARED(ref_path, "models/stories260K-hf/reference_outputs.json");
  std::ifstream f(ref_path);
  const auto j = nlohmann::json::parse(f);
  const auto prompt = j["input_ids"].get<std::vector<int32_t>>();
  const auto want = j["greedy_continuation_ids"].get<std::vector<int32_t>>();
  const std::string dir = test::shared_path("models/stories260K-hf");
  const auto w = model::load_llama_weights(dir, core::DType::F32, storage);
  kernels::CudaContext gpu(0);
  model::KvCacheDecoder<float> cpu_dec(w, nullptr, nullptr);
  model::KvCacheDecoder<float> gpu_dec(w, nullptr, nullptr, gpu.ctx());
  const DecoderComparison r = compare_decoders(cpu_dec, gpu_dec, prompt, 60, tol);
  EXPECT_LT(r.worst, tol);
  EXPECT_EQ(r.argmax_diffs, 0);
  // greedy generation itself: the CPU decoder's tokens up to the first one picked from a near tie (all of them
  // when there is none)
  model::GenerationOptions opt;
  opt.max_new_tokens = int64_t(r.tokens.size());
  const auto got = model::generate<float>(gpu_dec, prompt, opt).tokens;
  ASSERT_EQ(got.size(), r.tokens.size());
  const size_t same = r.first_tie();
  std::cout << "max |gpu - cpu| logit " << r.max_abs_diff << " (" << r.worst << " of the largest); greedy tokens "
            << "compared: " << same << " of " << got.size() << " (a near tie ends the comparison)\n";
  EXPECT_EQ(std::vector<int32_t>(got.begin(), got.begin() + int64_t(same)),
            std::vector<int32_t>(r.tokens.begin(), r.tokens.begin() + int64_t(same)));
  if (storage == core::DType::F32) {
    // and the reference (HF float64) continuation, as the CPU decoder's test asserts
    const size_t n = std::min(same, want.size());
    EXPECT_GE(n, size_t(20)) << "too few tokens before a near tie to compare";
    EXPECT_EQ(std::vector<int32_t>(got.begin(), got.begin() + int64_t(n)),
              std::vector<int32_t>(want.begin(), want.begin() + int64_t(n)));
  }
}

}  // namespace

// fp32 weights: both sides run fp32 GEMMs (cuBLASLt without TF32 vs oneDNN) and the GPU's attention is fp32 where
// the CPU's sums in double; only summation orders differ (~1e-7 relative per op, 5 blocks of stories260K):
// 1e-4 of the largest logit bounds it with two orders to spare, and the greedy tokens must agree wherever the
// CPU's two best logits are further apart than 2e-4 of the largest (none were, in the reference continuation).
TEST(CudaModelDecoder, Stories260KLogitsAndGreedyTokensMatchCpu) {
  SKIP_WITHOUT_GPU();
  stories_decoder_matches_cpu(core::DType::F32, 1e-4);
}

// bf16 weights: both round every GEMM input to bf16 (fp32 accumulation); a value on the other side of a bf16
// rounding boundary differs by 2^-8 in the next GEMM's input, so the bound is CudaModel's bf16 logits bound (1e-2).
TEST(CudaModelDecoder, Stories260KBf16WeightsMatchCpuUpToBf16Rounding) {
  SKIP_WITHOUT_GPU();
  stories_decoder_matches_cpu(core::DType::BF16, 1e-2);
}

// A random GQA model with an adapter on every projection and lm_head and a 9-key sliding window, fed past the
// window and past the initial cache reservation (the cache regrows mid-sequence with rows to move): fp32 as the
// stories260K test (1e-4); NF4 projections (dequantised bit-identically on the GPU, then bf16 GEMMs) as bf16 (1e-2).
TEST(CudaModelDecoder, AdapterWindowAndNf4MatchCpu) {
  SKIP_WITHOUT_GPU();
  const io::HfConfig c = windowed_tiny_config();
  const model::LoraLayout layout = decoder_layout(c);
  const auto params = random_lora_params<float>(layout, 9, 0.1);
  kernels::CudaContext gpu(0);
  for (const bool nf4 : {false, true}) {
    SCOPED_TRACE(nf4 ? "nf4" : "fp32");
    model::RandomInit init;
    init.seed = 5, init.init_std = 0.1, init.jitter_norms = true;
    const auto w = model::build_llama_weights(c, core::DType::F32, nf4 ? core::DType::BF16 : core::DType::F32,
                                              model::random_tensor_source(init), nf4);
    const double tol = nf4 ? 1e-2 : 1e-4;
    model::KvCacheDecoder<float> cpu_dec(w, &layout, params.data(), kernels::host(), 16);
    model::KvCacheDecoder<float> gpu_dec(w, &layout, params.data(), gpu.ctx(), 16);
    const DecoderComparison r = compare_decoders(cpu_dec, gpu_dec, random_prompt(13, c.vocab_size, 3), 40, tol);
    EXPECT_LT(r.worst, tol);
    EXPECT_EQ(r.argmax_diffs, 0);
    EXPECT_GT(gpu_dec.allocations(), 1);  // it did regrow (16 positions reserved, 53 fed)
  }
}

// The decoder (prefill of 7, a chunk of 3, then one token at a time) against the GPU's full forward over the
// whole sequence (LlamaModel on the same device weights, fp32 flash attention): the same block on the same
// device, different attention kernels and GEMM row counts, so summation orders only: 1e-4 of the largest logit.
TEST(CudaModelDecoder, MatchesTheGpuFullForward) {
  SKIP_WITHOUT_GPU();
  const io::HfConfig c = windowed_tiny_config();
  const model::LoraLayout layout = decoder_layout(c);
  const auto params = random_lora_params<float>(layout, 9, 0.1);
  const auto w = test::random_weights(c, core::DType::F32, core::DType::F32, 5, 0.1);
  kernels::CudaContext gpu(0);
  const model::LlamaWeights dw = model::to_device(w, gpu.ctx());
  const int64_t T = 31, V = c.vocab_size;
  const auto ids = random_prompt(T, V, 17);

  kernels::DeviceArray<float> p(layout.numel(), gpu.ctx()), logits(T * V, gpu.ctx());
  kernels::copy_to_device(p.data(), params.data(), params.size() * sizeof(float), gpu.ctx());
  model::TrainOptions fp32_attention;
  fp32_attention.bf16_attention = false;
  model::LlamaModel<float> full(dw, &layout, fp32_attention, gpu.ctx());
  model::ModelInput in;
  in.B = 1, in.T = T, in.input_ids = ids.data();
  full.forward_logits(in, p.data(), logits.data());
  const std::vector<float> want = download(logits.data(), size_t(T * V), gpu.ctx());

  model::KvCacheDecoder<float> dec(dw, &layout, params.data(), gpu.ctx());  // the device weights, shared
  std::vector<float> got(size_t(T * V));
  dec.feed(ids.data(), 7, got.data(), true);
  dec.feed(ids.data() + 7, 3, got.data() + 7 * V, true);
  for (int64_t t = 10; t < T; ++t) dec.feed(ids.data() + t, 1, got.data() + t * V);
  EXPECT_GT(max_abs(want), 1.0);
  EXPECT_LT(rel_diff(got, want), 1e-4);
}

// No allocation per token on the device: after the prefill, the context's allocated bytes stay the same for the
// whole generation, and the decoder allocated its buffers twice (construction, generate's reservation).
TEST(CudaModelDecoder, AllocatesNothingPerToken) {
  SKIP_WITHOUT_GPU();
  const io::HfConfig c = windowed_tiny_config();
  const auto w = test::random_weights(c, core::DType::F32, core::DType::F32, 5, 0.1);
  kernels::CudaContext gpu(0);
  model::KvCacheDecoder<float> dec(w, nullptr, nullptr, gpu.ctx());
  model::GenerationOptions opt;
  opt.max_new_tokens = 100;
  std::vector<int64_t> held;
  const auto r = model::generate<float>(dec, random_prompt(20, c.vocab_size, 1), opt, [&](int32_t) {
    held.push_back(gpu.allocated());
    return true;
  });
  ASSERT_EQ(r.tokens.size(), 100u);
  EXPECT_EQ(held.front(), held.back());
  EXPECT_EQ(*std::max_element(held.begin(), held.end()), held.front());
  EXPECT_EQ(dec.allocations(), 2);
}

// Runs on any machine: the host decoder's buffers are one allocation too, regrown only when a sequence
// outgrows them.
TEST(DecoderBuffers, OneAllocationPerGenerationOnTheHost) {
  io::HfConfig c = model::preset_config("tiny");
  c.path = "<tiny>";
  const auto w = test::random_weights(c, core::DType::F32, core::DType::F32, 5, 0.1);
  model::KvCacheDecoder<float> dec(w, nullptr, nullptr);
  EXPECT_EQ(dec.allocations(), 1);
  model::GenerationOptions opt;
  opt.max_new_tokens = 90;  // 10 + 90 positions > the 64 reserved at construction: generate reserves them
  const auto prompt = random_prompt(10, c.vocab_size, 2);
  EXPECT_EQ(model::generate<float>(dec, prompt, opt).tokens.size(), 90u);
  EXPECT_EQ(dec.allocations(), 2);
  EXPECT_GE(dec.cache_bytes(), 2 * c.num_hidden_layers * 100 * c.num_key_value_heads * c.head_dim * 4);
  model::generate<float>(dec, prompt, opt);  // the same size again: nothing new
  EXPECT_EQ(dec.allocations(), 2);
  // past the reservation the cache doubles (a few regrowths, never one per token)
  std::vector<float> logits(size_t(c.vocab_size));
  dec.reset();
  for (int64_t t = 0; t < 400; ++t) dec.feed(&prompt[size_t(t % 10)], 1, logits.data());
  EXPECT_LE(dec.allocations(), 5);
}

// --device for generate/chat, as train's: cpu -> the host; auto -> the host without a GPU; cuda without a GPU
// or without the CUDA build -> a one-line error saying which.
TEST(GenerationDevice, FollowsTrainsDeviceFlag) {
  std::string chosen;
  EXPECT_EQ(model::open_generation_device("cpu", &chosen), nullptr);
  EXPECT_EQ(chosen, "cpu");
  const std::string bad = test::error_of([] { model::open_generation_device("gpu"); });
  EXPECT_NE(bad.find("--device"), std::string::npos);
  if (kernels::cuda_device_count() == 0) {
    EXPECT_EQ(model::open_generation_device("auto", &chosen), nullptr);
    EXPECT_EQ(chosen, "cpu");
    const std::string e = test::error_of([] { model::open_generation_device("cuda"); });
    EXPECT_NE(e.find("--device cuda"), std::string::npos) << e;
    EXPECT_NE(e.find(kernels::cuda_built() ? "no GPU is visible" : "built without the CUDA backend"),
              std::string::npos)
        << e;
  } else {
    auto gpu = model::open_generation_device("auto", &chosen);
    ASSERT_NE(gpu, nullptr);
    EXPECT_EQ(chosen.rfind("cuda:0 (", 0), 0u) << chosen;
  }
}
