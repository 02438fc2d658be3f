// Model families beside Llama, against transformers (tools/reference_families.py, tests/golden/families/):
//   Mistral's sliding window (window 8 over 40 tokens): logits and loss, training gradients by finite
//   differences, and generation past the window;
//   Qwen2 (q/k/v biases, GQA, tied) with a LoRA adapter on all seven projections: logits, loss and the gradient
//   of every adapter tensor against PEFT's autograd;
//   Qwen2 with use_sliding_window, where only the layers from max_window_layers on slide.
// Before the window was implemented, a sequence longer than sliding_window was refused (and before that
// computed with full attention: a different loss).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "model/adapter_io.h"
#include "model/block.h"
#include "model/generate.h"
#include "model_test_util.h"

using namespace zerolora;
using namespace zerolora::test;

namespace {

std::string family_dir(const std::string& name) {
  return std::string(ZEROLORA_SOURCE_DIR) + "/tests/golden/families/" + name;
}

struct Golden {
  nlohmann::json info;
  core::Tensor ids, lengths, logits;
  int64_t B = 0, T = 0, V = 0;
  std::vector<int32_t> labels;  // ids at valid positions, -100 on padding (the golden's loss definition)
  model::ModelInput input() const {
    model::ModelInput in;
    in.B = B, in.T = T, in.input_ids = ids.data<int32_t>(), in.lengths = lengths.data<int32_t>();
    in.labels = labels.data();
    return in;
  }
  int32_t len(int64_t b) const { return lengths.data<int32_t>()[b]; }
};

Golden read_golden(const std::string& dir) {
  Golden g;
  std::ifstream jf(dir + "/golden.json");
  g.info = nlohmann::json::parse(jf);
  const io::TensorStore store = io::TensorStore::open_file(dir + "/golden.safetensors");
  g.ids = store.load("input_ids", core::DType::I32);
  g.lengths = store.load("lengths", core::DType::I32);
  g.logits = store.load("logits", core::DType::F32);
  g.B = g.ids.dim(0), g.T = g.ids.dim(1), g.V = g.logits.dim(2);
  g.labels.resize(size_t(g.B * g.T));
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t t = 0; t < g.T; ++t) g.labels[b * g.T + t] = t < g.len(b) ? g.ids.data<int32_t>()[b * g.T + t] : -100;
  return g;
}

// max |ours - golden| over the valid rows' logits
double logit_error(const Golden& g, const std::vector<float>& logits) {
  double err = 0;
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t t = 0; t < g.len(b); ++t)
      for (int64_t v = 0; v < g.V; ++v) {
        const int64_t i = (b * g.T + t) * g.V + v;
        err = std::max(err, double(std::abs(logits[i] - g.logits.data<float>()[i])));
      }
  return err;
}

model::LoraConfig qwen2_lora() {  // as tools/reference_families.py's LORA
  model::LoraConfig lc;
  lc.r = 4;
  lc.alpha = 8;
  lc.dropout = 0;
  lc.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return lc;
}

}  // namespace

// fp32 engine vs a float64 reference stored as fp32: logits of O(1) agree to fp32 rounding over a few hundred
// accumulated terms (the parity goldens' bound, 1e-5); the loss, a mean of ~60 NLLs, to 1e-6.
TEST(MistralWindow, LogitsAndLossMatchTransformers) {
  const std::string dir = family_dir("mistral_window");
  const Golden g = read_golden(dir);
  auto w = model::load_llama_weights(dir, core::DType::F32, core::DType::F32);
  ASSERT_EQ(w.config.sliding_window, 8);
  ASSERT_EQ(g.T, 40);
  model::LlamaModel<float> m(w, nullptr);
  std::vector<float> logits(size_t(g.B * g.T * g.V));
  m.forward_logits(g.input(), nullptr, logits.data());
  EXPECT_LE(logit_error(g, logits), 1e-5);
  const auto res = m.forward_backward(g.input(), nullptr, nullptr, 1, 0);
  EXPECT_EQ(res.tokens, g.info["num_target_tokens"].get<int64_t>());
  const double loss = res.loss_sum / double(res.tokens);
  EXPECT_NEAR(loss, g.info["loss"].get<double>(), 1e-6);
  // and the window is what made the difference: full attention's loss is far from it
  EXPECT_GT(std::abs(loss - g.info["full_attention_loss"].get<double>()), 1e-3);
}

// bf16 attention (what --bf16 trains with) takes the same window: within bf16's rounding of the logits.
TEST(MistralWindow, Bf16WithinBound) {
  const std::string dir = family_dir("mistral_window");
  const Golden g = read_golden(dir);
  auto w = model::load_llama_weights(dir, core::DType::F32, core::DType::BF16);
  model::LlamaModel<float> m(w, nullptr);
  std::vector<float> logits(size_t(g.B * g.T * g.V));
  m.forward_logits(g.input(), nullptr, logits.data());
  EXPECT_LE(logit_error(g, logits), 3e-2);  // as Parity.Qwen2Bf16WithinBound: bf16 weights and GEMM inputs
  const auto res = m.forward_backward(g.input(), nullptr, nullptr, 1, 0);
  EXPECT_NEAR(res.loss_sum / double(res.tokens), g.info["loss"].get<double>(), 1e-2);
}

// Training past the window: the explicit backward (LoRA on every projection and lm_head) against central
// differences in double, with a window of 3 over 9 tokens, padding, and gradient checkpointing giving the same.
TEST(MistralWindow, GradientsMatchFiniteDifferences) {
  io::HfConfig c = tiny_grad_config();
  c.architecture = "MistralForCausalLM", c.model_type = "mistral";
  c.sliding_window = 3;
  auto w = random_weights(c, core::DType::F64, core::DType::F64);
  model::LoraConfig lc = qwen2_lora();
  lc.r = 2;
  lc.alpha = 6;
  lc.target_modules.push_back("lm_head");
  model::LoraLayout layout(c, lc);
  model::LlamaModel<double> m(w, &layout);
  TestBatch batch = make_batch(9, 6, int32_t(c.vocab_size), 3);
  auto in = batch.input();
  auto params = random_lora_params<double>(layout, 5);
  std::vector<double> grads(size_t(layout.numel()), 0.0);
  m.forward_backward(in, params.data(), grads.data(), 1.0 / 9.0, 0);
  std::vector<int64_t> picks;
  for (const auto& s : layout.slots())
    for (int64_t k = 0; k < 4; ++k) {
      picks.push_back(s.a_offset + (k * 7919) % (s.r * s.in));
      picks.push_back(s.b_offset + (k * 104729) % (s.out * s.r));
    }
  auto loss_at = [&](const std::vector<double>& p) {
    return m.forward_backward(in, p.data(), nullptr, 1.0, 0).loss_sum / 9.0;
  };
  double max_err = 0, max_g = 0;
  const double h = 1e-6;
  for (int64_t i : picks) {
    auto p = params;
    p[size_t(i)] += h;
    const double lp = loss_at(p);
    p[size_t(i)] -= 2 * h;
    const double fd = (lp - loss_at(p)) / (2 * h);
    max_err = std::max(max_err, std::abs(fd - grads[size_t(i)]));
    max_g = std::max(max_g, std::abs(fd));
  }
  ASSERT_GT(max_g, 1e-3) << "gradients are suspiciously small";
  // central differences with h 1e-6 in double: truncation O(h^2) and rounding O(eps/h) ~ 1e-10 relative
  EXPECT_LT(max_err / max_g, 1e-7) << "max abs error " << max_err << " vs max |grad| " << max_g;

  // the window matters for these gradients: without it they differ
  model::LlamaWeights wf = w;  // the same weights (shared tensors), no window
  wf.config.sliding_window = 0;
  model::LlamaModel<double> mf(wf, &layout);
  std::vector<double> grads_full(grads.size(), 0.0);
  mf.forward_backward(in, params.data(), grads_full.data(), 1.0 / 9.0, 0);
  double diff = 0;
  for (size_t i = 0; i < grads.size(); ++i) diff = std::max(diff, std::abs(grads[i] - grads_full[i]));
  EXPECT_GT(diff, 1e-6);

  // gradient checkpointing recomputes the windowed forward: the same gradients
  model::TrainOptions opt;
  opt.gradient_checkpointing = true;
  model::LlamaModel<double> mc(w, &layout, opt);
  std::vector<double> grads_ckpt(grads.size(), 0.0);
  mc.forward_backward(in, params.data(), grads_ckpt.data(), 1.0 / 9.0, 0);
  EXPECT_EQ(grads_ckpt, grads);
}

// Generation past the window: the KV-cache decoder (prefill, then one token at a time) gives the rows of the
// full windowed forward, with an adapter. Both are the same block over the same kernels; the decoder's attention
// sums in double (kernels::attention_decode), the forward's in fp32 tiles: fp32 rounding apart.
TEST(MistralWindow, DecoderMatchesForwardPastTheWindow) {
  const std::string dir = family_dir("mistral_window");
  const Golden g = read_golden(dir);
  auto w = model::load_llama_weights(dir, core::DType::F32, core::DType::F32);
  model::LoraLayout layout(w.config, qwen2_lora());
  auto params = random_lora_params<float>(layout, 9, 0.1);
  model::TrainOptions opt;
  opt.bf16_attention = false;
  model::LlamaModel<float> m(w, &layout, opt);
  model::ModelInput in;
  in.B = 1, in.T = g.T, in.input_ids = g.ids.data<int32_t>();
  std::vector<float> want(size_t(g.T * g.V));
  m.forward_logits(in, params.data(), want.data());

  model::KvCacheDecoder<float> dec(w, &layout, params.data());
  const int64_t prefill = 5;  // shorter than the window: the rest (35 tokens) is decoded one by one
  std::vector<float> got(size_t(g.T * g.V));
  dec.feed(g.ids.data<int32_t>(), prefill, got.data(), true);
  for (int64_t t = prefill; t < g.T; ++t) dec.feed(g.ids.data<int32_t>() + t, 1, got.data() + t * g.V, false);
  double err = 0, mx = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, double(std::abs(got[i] - want[i])));
    mx = std::max(mx, double(std::abs(want[i])));
  }
  EXPECT_LT(err, 1e-5 * std::max(1.0, mx));
}

// Qwen2 with use_sliding_window slides only in the layers from max_window_layers on (here layers 1 and 2 of 3,
// window 6 over 24 tokens; transformers 4.56 eager). Both other readings give another loss, recorded beside.
TEST(Qwen2Window, OnlyTheSlidingLayersMatchTransformers) {
  const std::string dir = family_dir("qwen2_window_layers");
  const Golden g = read_golden(dir);
  auto w = model::load_llama_weights(dir, core::DType::F32, core::DType::F32);
  ASSERT_EQ(model::Architecture::of(w.config).window, (std::vector<int64_t>{0, 6, 6}));
  model::LlamaModel<float> m(w, nullptr);
  std::vector<float> logits(size_t(g.B * g.T * g.V));
  m.forward_logits(g.input(), nullptr, logits.data());
  EXPECT_LE(logit_error(g, logits), 1e-5);  // as MistralWindow.LogitsAndLossMatchTransformers
  const auto res = m.forward_backward(g.input(), nullptr, nullptr, 1, 0);
  const double loss = res.loss_sum / double(res.tokens);
  EXPECT_NEAR(loss, g.info["loss"].get<double>(), 1e-6);
  EXPECT_GT(std::abs(loss - g.info["full_attention_loss"].get<double>()), 1e-3);
  EXPECT_GT(std::abs(loss - g.info["window_in_every_layer_loss"].get<double>()), 1e-3);
  // generation: the decoder gives the forward's last row
  model::KvCacheDecoder<float> dec(w, nullptr, nullptr);
  std::vector<float> last(size_t(g.V));
  dec.feed(g.ids.data<int32_t>(), g.T, last.data(), false);
  double err = 0;
  for (int64_t v = 0; v < g.V; ++v) err = std::max(err, double(std::abs(last[v] - g.logits.data<float>()[(g.T - 1) * g.V + v])));
  EXPECT_LE(err, 1e-5);
}

// Qwen2 with its q/k/v biases and a LoRA adapter on every projection: logits, loss, and d loss / d (every A and B)
// against PEFT + transformers autograd in float64. fp32 engine: gradients to fp32 rounding relative to the
// largest (1e-5 of max |grad|; the engine's float-vs-double checks bound the same rounding).
TEST(Qwen2Lora, LogitsLossAndGradientsMatchPeft) {
  const std::string dir = family_dir("qwen2_lora_grad");
  const Golden g = read_golden(dir);
  auto w = model::load_llama_weights(dir, core::DType::F32, core::DType::F32);
  ASSERT_TRUE(w.config.qkv_bias);
  ASSERT_TRUE(w.layers[0].proj[0].has_bias());
  model::LoraLayout layout(w.config, qwen2_lora());
  std::vector<float> params(size_t(layout.numel())), want_grads(size_t(layout.numel()));
  model::load_adapter_tensors(dir + "/lora.safetensors", layout, params.data());
  model::load_adapter_tensors(dir + "/grads.safetensors", layout, want_grads.data());  // same names, same layout
  model::TrainOptions opt;
  opt.bf16_attention = false;
  model::LlamaModel<float> m(w, &layout, opt);

  std::vector<float> logits(size_t(g.B * g.T * g.V));
  m.forward_logits(g.input(), params.data(), logits.data());
  EXPECT_LE(logit_error(g, logits), 1e-5);

  std::vector<float> grads(params.size(), 0.f);
  const int64_t ntok = g.info["num_target_tokens"].get<int64_t>();
  const auto res = m.forward_backward(g.input(), params.data(), grads.data(), 1.0 / double(ntok), 0);
  ASSERT_EQ(res.tokens, ntok);
  EXPECT_NEAR(res.loss_sum / double(ntok), g.info["loss"].get<double>(), 1e-6);
  double err = 0, mx = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    err = std::max(err, double(std::abs(grads[i] - want_grads[i])));
    mx = std::max(mx, double(std::abs(want_grads[i])));
  }
  ASSERT_GT(mx, 1e-2);
  EXPECT_LT(err / mx, 1e-5) << "max abs error " << err << " vs max |grad| " << mx;
}

// The per-layer windows the block reads (Architecture::of): Mistral slides in every layer; Qwen2 with
// use_sliding_window only from max_window_layers on (Qwen2Config's layer_types rule).
TEST(Architecture, WindowsPerLayer) {
  auto mistral = io::parse_hf_config(nlohmann::json::parse(R"({"architectures": ["MistralForCausalLM"],
      "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 3,
      "sliding_window": 16})"), "<mistral>");
  EXPECT_EQ(model::Architecture::of(mistral).window, (std::vector<int64_t>{16, 16, 16}));
  auto qwen = nlohmann::json::parse(R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
      "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 3, "use_sliding_window": true,
      "sliding_window": 32, "max_window_layers": 1})");
  EXPECT_EQ(model::Architecture::of(io::parse_hf_config(qwen, "<qwen>")).window, (std::vector<int64_t>{0, 32, 32}));
  qwen["max_window_layers"] = 0;
  EXPECT_EQ(model::Architecture::of(io::parse_hf_config(qwen, "<qwen>")).window, (std::vector<int64_t>{32, 32, 32}));
  qwen["use_sliding_window"] = false;
  EXPECT_EQ(model::Architecture::of(io::parse_hf_config(qwen, "<qwen>")).window, (std::vector<int64_t>{0, 0, 0}));
}
