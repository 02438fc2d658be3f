// QLoRA weights in the model: the seven projections as NF4 (double quantised, bf16 compute).
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/nf4.h"
#include "model_test_util.h"

using namespace zerolora;
using namespace zerolora::test;

namespace {

// The same random model with every projection replaced by its NF4 round trip (dequantise(quantise(w))).
model::TensorSource dequantised_projections(model::TensorSource inner) {
  return [inner](const std::string& name, core::DType dtype, const core::Shape& shape) {
    core::Tensor t = inner(name, core::DType::F32, shape);
    if (name.find("_proj.weight") != std::string::npos) {
      auto q = kernels::nf4_quantize(t.data<float>(), shape[0], shape[1]);
      kernels::nf4_dequantize(q, t.data<float>());
    }
    return t.to(dtype);
  };
}

}  // namespace

TEST(QloraModel, ProjectionsTakeAboutHalfAByteAParameter) {
  io::HfConfig c = model::preset_config("small");
  c.path = "<small>";
  model::RandomInit init;
  auto w = model::build_llama_weights(c, core::DType::F32, core::DType::BF16, model::random_tensor_source(init), true);
  int64_t params = 0, bytes = 0;
  for (const auto& l : w.layers)
    for (const auto& p : l.proj) {
      ASSERT_TRUE(p.nf4 != nullptr);
      EXPECT_EQ(p.weight.numel(), 0);  // no full-precision copy is kept
      params += p.N * p.K;
      bytes += p.resident_bytes();
    }
  const double per_param = double(bytes) / double(params);
  EXPECT_GT(per_param, 0.515);
  EXPECT_LT(per_param, 0.517);  // 4 bits + 8/64 (absmax codes) + 32/(64*256) (second-level scales)
}

TEST(QloraModel, LogitsEqualTheDequantisedDenseModelUpToBf16) {
  io::HfConfig c = model::preset_config("tiny");
  c.path = "<tiny>";
  model::RandomInit init;
  init.seed = 4, init.init_std = 0.05, init.jitter_norms = true;
  auto source = model::random_tensor_source(init);
  auto wq = model::build_llama_weights(c, core::DType::F32, core::DType::BF16, source, true);
  auto wd = model::build_llama_weights(c, core::DType::F32, core::DType::F32, dequantised_projections(source));
  auto wf = model::build_llama_weights(c, core::DType::F32, core::DType::F32, source);
  model::LoraConfig lc;
  lc.r = 4, lc.dropout = 0;
  lc.target_modules = {"q_proj", "v_proj", "down_proj"};
  model::LoraLayout layout(c, lc);
  auto params = random_lora_params<float>(layout, 3, 0.1);
  TestBatch batch = make_batch(12, 7, int32_t(c.vocab_size), 5);
  std::vector<float> lq(batch.B * batch.T * c.vocab_size), ld(lq.size()), lf(lq.size());
  model::LlamaModel<float>(wq, &layout).forward_logits(batch.input(), params.data(), lq.data());
  model::LlamaModel<float>(wd, &layout).forward_logits(batch.input(), params.data(), ld.data());
  model::LlamaModel<float>(wf, &layout).forward_logits(batch.input(), params.data(), lf.data());
  double to_dense = 0, to_full = 0, scale = 0;
  for (size_t i = 0; i < lq.size(); ++i) {
    to_dense = std::max(to_dense, double(std::abs(lq[i] - ld[i])));
    to_full = std::max(to_full, double(std::abs(lq[i] - lf[i])));
    scale = std::max(scale, double(std::abs(ld[i])));
  }
  EXPECT_LT(to_dense, 0.02 * scale + 1e-3);  // only bf16 rounding of GEMM inputs separates them
  EXPECT_GT(to_full, to_dense);              // quantisation itself is visible against the original weights

  // gradients flow through the NF4 weights (backward of the input) into every adapter
  std::vector<float> g(layout.numel(), 0.f);
  auto r = model::LlamaModel<float>(wq, &layout).forward_backward(batch.input(), params.data(), g.data(), 0.1, 0);
  EXPECT_GT(r.tokens, 0);
  for (const auto& s : layout.slots()) {
    double na = 0;
    for (int64_t i = 0; i < s.r * s.in; ++i) na += std::abs(g[s.a_offset + i]);
    EXPECT_GT(na, 0.0) << s.peft_prefix();
  }
}
