// The whole model on the GPU (kernels/cuda) against the same model on the CPU: loss, LoRA gradients and
// logits, for fp32, bf16 and NF4 frozen weights, with padding, packing, GQA, LoRA dropout and gradient
// checkpointing. Skipped (one line) where no GPU is visible.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/context.h"
#include "model_test_util.h"

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
