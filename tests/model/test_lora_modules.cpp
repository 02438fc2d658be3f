// PEFT LoRA on lm_head and embed_tokens, and PEFT's bias modes, against PEFT 0.12 itself
// (tools/reference_lora_modules.py, tests/golden/lora_modules/<case>/: the base model, the adapter folder PEFT
// wrote, the reloaded adapter's logits, merge_and_unload()'s tensors, training gradients):
//   - adapters PEFT writes for lm_head / embed_tokens targets (with its ".base_layer.weight" copies of the frozen
//     matrices) load, and forward, the KV-cache decoder and merge give PEFT's numbers, tied models included
//     (merge_and_unload adds a tied lm_head's delta into the shared embedding: so does merge); their training
//     gradients are PEFT's;
//   - --lora_bias all: biases train (gradients against PEFT's autograd), are saved under PEFT's names and
//     reload; lora_only: they train, but the adapter file holds none (PEFT's quirk), so a reload computes with
//     the base's biases, as PEFT's reload does.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "kernels/context.h"
#include "model/adapter_io.h"
#include "model/generate.h"
#include "model/llama.h"
#include "model/merge.h"
#include "test_util.h"

using namespace zerolora;

namespace {

std::string case_dir(const std::string& name) {
  return std::string(ZEROLORA_SOURCE_DIR) + "/tests/golden/lora_modules/" + name;
}

struct Case {
  std::string dir, base, adapter;
  nlohmann::json info;
  io::TensorStore golden;
  core::Tensor ids, lengths, logits;
  int64_t B = 0, T = 0, V = 0;
  std::vector<int32_t> labels;
  explicit Case(const std::string& name) : dir(case_dir(name)) {
    std::ifstream jf(dir + "/golden.json");
    info = nlohmann::json::parse(jf);
    base = dir + "/" + info["base"].get<std::string>();
    adapter = dir + "/adapter";
    golden = io::TensorStore::open_file(dir + "/golden.safetensors");
    ids = golden.load("input_ids", core::DType::I32);
    lengths = golden.load("lengths", core::DType::I32);
    logits = golden.load("logits", core::DType::F32);
    B = ids.dim(0), T = ids.dim(1), V = logits.dim(2);
    labels.resize(size_t(B * T));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) labels[b * T + t] = t < len(b) ? ids.data<int32_t>()[b * T + t] : -100;
  }
  int32_t len(int64_t b) const { return lengths.data<int32_t>()[b]; }
  model::ModelInput input() const {
    model::ModelInput in;
    in.B = B, in.T = T, in.input_ids = ids.data<int32_t>(), in.lengths = lengths.data<int32_t>();
    in.labels = labels.data();
    return in;
  }
  template <typename S>
  double logit_error(const std::vector<S>& ours) const {
    double err = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < len(b); ++t)
        for (int64_t v = 0; v < V; ++v) {
          const int64_t i = (b * T + t) * V + v;
          err = std::max(err, std::abs(double(ours[size_t(i)]) - double(logits.data<float>()[i])));
        }
    return err;
  }
};

const char* kCases[] = {"llama_lm_embed", "llama_tied", "llama_tied_lm_head", "qwen2_bias_all", "qwen2_bias_lora_only"};

}  // namespace

// The reloaded adapter's logits. The golden is float64 stored as fp32: the double engine agrees to fp32's
// rounding of O(1) logits and HF's fp32 RoPE angles (1e-6); the fp32 engine to fp32 accumulation over a few hundred terms (1e-5, the
// parity goldens' bound). Before: lm_head/embed_tokens adapters were refused (".base_layer.weight has no
// place"), embed_tokens was no target, and bias "all" adapters' bias tensors were refused.
TEST(LoraModules, ReloadedAdapterLogitsMatchPeft) {
  for (const char* name : kCases) {
    SCOPED_TRACE(name);
    const Case c(name);
    {
      auto w = model::load_llama_weights(c.base, core::DType::F64, core::DType::F64);
      const model::LoadedAdapter a = model::load_adapter_for_model(w.config, c.adapter);
      ASSERT_TRUE(a.layout);
      std::vector<double> params(a.params.begin(), a.params.end());
      model::LlamaModel<double> m(w, a.layout.get());
      std::vector<double> logits(size_t(c.B * c.T * c.V));
      m.forward_logits(c.input(), params.data(), logits.data());
      EXPECT_LE(c.logit_error(logits), 1e-6);
      const auto res = m.forward_backward(c.input(), params.data(), nullptr, 1, 0);
      EXPECT_EQ(res.tokens, c.info["num_target_tokens"].get<int64_t>());
      // HF computes RoPE's angles in fp32 (reference_common.hf_float64 keeps that), this engine in double: the
      // losses differ by a few 1e-9
      EXPECT_NEAR(res.loss_sum / double(res.tokens), c.info["loss"].get<double>(), 1e-7);
    }
    auto w = model::load_llama_weights(c.base, core::DType::F32, core::DType::F32);
    const model::LoadedAdapter a = model::load_adapter_for_model(w.config, c.adapter);
    model::LlamaModel<float> m(w, a.layout.get());
    std::vector<float> logits(size_t(c.B * c.T * c.V));
    m.forward_logits(c.input(), a.data(), logits.data());
    EXPECT_LE(c.logit_error(logits), 1e-5);

    // the KV-cache decoder (generate/chat) runs the same adapter: row 0 fed token by token
    model::KvCacheDecoder<float> dec(w, a.layout.get(), a.data());
    std::vector<float> step(size_t(c.V));
    double err = 0;
    for (int64_t t = 0; t < c.len(0); ++t) {
      dec.feed(c.ids.data<int32_t>() + t, 1, step.data());
      for (int64_t v = 0; v < c.V; ++v)
        err = std::max(err, std::abs(double(step[size_t(v)]) - double(c.logits.data<float>()[t * c.V + v])));
    }
    EXPECT_LE(err, 1e-5);
  }
}

// merge equals merge_and_unload() tensor by tensor (PEFT merged in float64 and stored fp32; ours sums in fp32
// with a double B A product: within an fp32 rounding of values below 1, 1e-6). The tied case is PEFT's quirk:
// lm_head's delta lands in the shared embedding (the merged model's loss differs from the adapter's).
TEST(LoraModules, MergeEqualsMergeAndUnload) {
  for (const char* name : kCases) {
    SCOPED_TRACE(name);
    const Case c(name);
    test::TempDir tmp;
    model::merge_adapter(c.base, c.adapter, (tmp / "merged").string());
    const io::TensorStore merged = io::TensorStore::open_model_dir((tmp / "merged").string());
    const io::TensorStore base = io::TensorStore::open_model_dir(c.base);
    int compared = 0, changed = 0;
    for (const auto& name_g : c.golden.names()) {
      if (name_g.rfind("merged.", 0) != 0) continue;
      const std::string t = name_g.substr(7);
      ASSERT_TRUE(merged.has(t)) << t;
      const core::Tensor want = c.golden.load(name_g, core::DType::F32);
      const core::Tensor got = merged.load(t, core::DType::F32, want.shape());
      const core::Tensor orig = base.load(t, core::DType::F32, want.shape());
      double err = 0, moved = 0;
      for (int64_t i = 0; i < want.numel(); ++i) {
        err = std::max(err, double(std::abs(got.data<float>()[i] - want.data<float>()[i])));
        moved = std::max(moved, double(std::abs(orig.data<float>()[i] - want.data<float>()[i])));
      }
      EXPECT_LE(err, 1e-6) << t;
      compared += 1;
      changed += moved > 1e-3;
    }
    EXPECT_GT(compared, 10);
    EXPECT_GT(changed, 0);
  }
  // the tied merge changed the embedding by both deltas: its loss is the merged model's, not the adapter's
  const Case c("llama_tied");
  test::TempDir tmp;
  model::merge_adapter(c.base, c.adapter, (tmp / "merged").string());
  auto w = model::load_llama_weights((tmp / "merged").string(), core::DType::F64, core::DType::F64);
  model::LlamaModel<double> m(w, nullptr);
  const auto res = m.forward_backward(c.input(), nullptr, nullptr, 1, 0);
  EXPECT_NEAR(res.loss_sum / double(res.tokens), c.info["merged_model_loss"].get<double>(), 1e-6);
}

// Training gradients of every trainable tensor (LoRA A/B and, with bias "all", every bias) against PEFT's
// autograd in float64, relative to each tensor's largest gradient: the golden is stored as fp32 (relative
// rounding 6e-8) and HF's RoPE angles are fp32 (a few 1e-9): 1e-6.
void expect_gradients_match(const std::string& name, size_t bias_slots, int tensors) {
  SCOPED_TRACE(name);
  const Case c(name);
  auto w = model::load_llama_weights(c.base, core::DType::F64, core::DType::F64);
  const model::LoadedAdapter a = model::load_adapter_for_model(w.config, c.adapter);
  const model::LoraLayout& layout = *a.layout;
  ASSERT_EQ(layout.bias_slots().size(), bias_slots);
  std::vector<double> params(a.params.begin(), a.params.end()), grads(params.size(), 0.0);
  model::LlamaModel<double> m(w, &layout);
  const int64_t ntok = c.info["num_target_tokens"].get<int64_t>();
  m.forward_backward(c.input(), params.data(), grads.data(), 1.0 / double(ntok), 0);
  auto check = [&](const std::string& tensor, int64_t offset, int64_t n) {
    SCOPED_TRACE(tensor);
    ASSERT_TRUE(c.golden.has("grad." + tensor));
    const core::Tensor g = c.golden.load("grad." + tensor, core::DType::F32);
    ASSERT_EQ(g.numel(), n);
    double gmax = 0, err = 0;
    for (int64_t i = 0; i < n; ++i) {
      gmax = std::max(gmax, double(std::abs(g.data<float>()[i])));
      err = std::max(err, std::abs(grads[size_t(offset + i)] - double(g.data<float>()[i])));
    }
    ASSERT_GT(gmax, 1e-6);
    EXPECT_LE(err / gmax, 1e-6);
  };
  int checked = 0;
  for (const auto& s : layout.slots()) {
    check(s.a_name(), s.a_offset, s.r * s.in);
    check(s.b_name(), s.b_offset, s.out * s.r);
    checked += 2;
  }
  for (const auto& b : layout.bias_slots()) {
    check(b.peft_name(), b.offset, b.n);
    checked += 1;
  }
  EXPECT_EQ(checked, tensors);
}

TEST(LoraModules, BiasAllGradientsMatchPeft) {
  expect_gradients_match("qwen2_bias_all", 6, 8 + 6);  // q, v LoRA of 2 layers; q, k, v biases of 2 layers
}

// A tied lm_head's LoRA (PEFT wraps lm_head around the shared embedding): before, LoraLayout refused lm_head on
// tied models.
TEST(LoraModules, TiedLmHeadGradientsMatchPeft) {
  expect_gradients_match("llama_tied_lm_head", 0, 4 + 2);  // q of 2 layers, lm_head
}

// embed_tokens' LoRA trains (lora_embedding_A through the embedding's scatter-add backward, B as a GEMM), beside
// lm_head's, untied and tied. Before, training it was refused.
TEST(LoraModules, EmbedTokensGradientsMatchPeft) {
  expect_gradients_match("llama_lm_embed", 0, 2 + 8 + 2);  // embed_tokens, q and v of 2 layers, lm_head
  expect_gradients_match("llama_tied", 0, 2 + 4 + 2);      // embed_tokens, q of 2 layers, lm_head
}

// Saving writes PEFT's key names: bias "all" every bias (".base_layer.bias" on adapted projections), lora_only
// none (as PEFT); lm_head/embed_tokens as lora_A/B and lora_embedding_A/B. PEFT's ".base_layer.weight" copies
// are not written (PEFT loads adapters without them).
TEST(LoraModules, SavedKeysArePeftsAndReloadExactly) {
  for (const char* name : kCases) {
    SCOPED_TRACE(name);
    const Case c(name);
    auto w = model::load_llama_weights(c.base, core::DType::F32, core::DType::F32);
    const model::LoadedAdapter a = model::load_adapter_for_model(w.config, c.adapter);
    test::TempDir tmp;
    model::save_peft_adapter(tmp.str(), *a.layout, a.data(), c.base);
    const io::TensorStore saved = io::TensorStore::open_file((tmp / "adapter_model.safetensors").string());
    const auto names = saved.names();
    std::set<std::string> ours(names.begin(), names.end()), peft;
    for (const auto& k : c.info["adapter_keys"])
      if (k.get<std::string>().find(".base_layer.weight") == std::string::npos) peft.insert(k.get<std::string>());
    EXPECT_EQ(ours, peft);
    const model::LoadedAdapter again = model::load_adapter_for_model(w.config, tmp.str());
    EXPECT_EQ(again.params, a.params);
  }
}

// lora_only: the biases train (slots for the adapted q/v, initialised from the base), yet the file has none;
// init_lora_params starts every bias slot from the base model's bias.
TEST(LoraModules, LoraOnlyBiasSlotsStartFromTheBase) {
  const Case c("qwen2_bias_lora_only");
  const io::HfConfig config = io::load_hf_config(c.base + "/config.json");
  const model::LoraLayout layout(config, model::read_peft_adapter_config(c.adapter));
  ASSERT_EQ(layout.bias_slots().size(), 4u);  // q and v of 2 layers (k has a bias but is not adapted)
  for (const auto& b : layout.bias_slots()) EXPECT_FALSE(b.saved);
  std::vector<float> params(size_t(layout.numel()), -1.f);
  model::init_lora_params(layout, params.data(), 1);
  const io::TensorStore base = io::TensorStore::open_model_dir(c.base);
  for (const auto& b : layout.bias_slots()) {
    const core::Tensor want = base.load(b.base_name(), core::DType::F32, {b.n});
    for (int64_t i = 0; i < b.n; ++i) ASSERT_EQ(params[size_t(b.offset + i)], want.data<float>()[i]) << b.base_name();
  }
  // a model without biases has nothing for all / lora_only to train (as PEFT)
  io::HfConfig llama = io::load_hf_config(case_dir("llama_lm_embed") + "/base/config.json");
  model::LoraConfig all;
  all.bias = "all";
  EXPECT_TRUE(model::LoraLayout(llama, all).bias_slots().empty());
  all.bias = "some";
  EXPECT_NE(test::error_of([&] { model::LoraLayout(llama, all); }).find("none, all or lora_only"), std::string::npos);
}

// What is refused, with the reason: a ".base_layer.weight" copy that differs from the base model's (PEFT would
// compute with the copy).
TEST(LoraModules, Refusals) {
  const Case c("llama_lm_embed");
  test::TempDir tmp;
  std::filesystem::copy(c.adapter, tmp / "adapter");
  {
    const io::TensorStore src = io::TensorStore::open_file(c.adapter + "/adapter_model.safetensors");
    std::vector<std::pair<std::string, core::Tensor>> tensors;
    for (const auto& n : src.names()) {
      core::Tensor t = src.load(n, core::DType::F32);
      if (n == "base_model.model.lm_head.base_layer.weight") t.data<float>()[5] += 0.25f;
      tensors.push_back({n, std::move(t)});
    }
    io::write_safetensors((tmp / "adapter" / "adapter_model.safetensors").string(), tensors);
  }
  auto w = model::load_llama_weights(c.base, core::DType::F32, core::DType::F32);
  const std::string msg = test::error_of([&] { model::load_adapter_for_model(w.config, (tmp / "adapter").string()); });
  EXPECT_NE(msg.find("lm_head.base_layer.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("differs from the base model"), std::string::npos) << msg;
}

// The same adapters on the CUDA backend (embed_tokens' gather/scatter, the trainable biases as the GEMM epilogue's
// bias, lm_head's LoRA; skips without a GPU): loss, every gradient and the logits against the CPU's fp32 engine,
// 1e-4 of the largest value (CudaModel.Fp32StepMatchesCpu's bound: fp32 sums in other orders), and the
// decoder's logits against the golden.
TEST(CudaLoraModules, AdaptersMatchTheCpu) {
  if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no GPU visible: CUDA LoRA-modules test skipped";
  kernels::CudaContext gpu(0);
  const kernels::Context& dev = gpu.ctx();
  for (const char* name : {"llama_lm_embed", "llama_tied", "qwen2_bias_all"}) {
    SCOPED_TRACE(name);
    const Case c(name);
    auto w = model::load_llama_weights(c.base, core::DType::F32, core::DType::F32);
    const model::LoadedAdapter a = model::load_adapter_for_model(w.config, c.adapter);
    const model::LoraLayout& layout = *a.layout;
    const int64_t n = layout.numel(), nl = c.B * c.T * c.V;
    model::TrainOptions opt;
    opt.bf16_attention = false;
    opt.loss_chunk_rows = 8;
    struct Out {
      model::LossResult loss;
      std::vector<float> grads, logits;
    };
    auto run = [&](const kernels::Context& ctx) {
      const model::LlamaWeights dw = model::to_device(w, ctx);
      kernels::DeviceArray<float> p(n, ctx), g(n, ctx), logits(nl, ctx);
      kernels::copy_to_device(p.data(), a.params.data(), size_t(n) * sizeof(float), ctx);
      kernels::fill_zero<float>(g.data(), n, ctx);
      model::LlamaModel<float> m(ctx.on_cuda() ? dw : w, &layout, opt, ctx);
      Out o;
      o.loss = m.forward_backward(c.input(), p.data(), g.data(), 1.0 / 16, 0);
      m.forward_logits(c.input(), p.data(), logits.data());
      o.grads.resize(size_t(n));
      o.logits.resize(size_t(nl));
      kernels::copy_to_host(o.grads.data(), g.data(), size_t(n) * sizeof(float), ctx);
      kernels::copy_to_host(o.logits.data(), logits.data(), size_t(nl) * sizeof(float), ctx);
      return o;
    };
    const Out cpu = run(kernels::host()), gpu_out = run(dev);
    auto rel = [](const std::vector<float>& x, const std::vector<float>& y) {
      double d = 0, s = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        d = std::max(d, double(std::abs(x[i] - y[i])));
        s = std::max(s, double(std::abs(y[i])));
      }
      return d / std::max(s, 1e-30);
    };
    EXPECT_NEAR(gpu_out.loss.loss_sum, cpu.loss.loss_sum, 1e-5 * std::abs(cpu.loss.loss_sum));
    EXPECT_LT(rel(gpu_out.grads, cpu.grads), 1e-4);
    EXPECT_LT(rel(gpu_out.logits, cpu.logits), 1e-4);
    // the decoder on the device: row 0 token by token
    model::KvCacheDecoder<float> decoder(w, &layout, a.data(), dev);
    std::vector<float> step(size_t(c.V));
    double err = 0;
    for (int64_t t = 0; t < c.len(0); ++t) {
      decoder.feed(c.ids.data<int32_t>() + t, 1, step.data());
      for (int64_t v = 0; v < c.V; ++v)
        err = std::max(err, std::abs(double(step[size_t(v)]) - double(c.logits.data<float>()[t * c.V + v])));
    }
    EXPECT_LE(err, 1e-4);
  }
}
