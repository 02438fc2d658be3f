// ZeRO-3 frozen weights under mpirun. Zero3Mpi.* launch this binary on 2 and 4 ranks running the
// Zero3Worker.* tests: every rank keeps about 1/world of the frozen model (the engine's own accounting),
// each gathered part equals the whole model loaded on one rank bit for bit (bf16, f32 with biases,
// fp16-rounded, NF4 codes and scales), and a pass through the model with the stream gives the same loss
// and gradients as the resident model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "dist/mpi_test_support.h"
#include "dist/solo_comm.h"
#include "kernels/context.h"
#include "model/device_weight_stream.h"
#include "kernels/nf4.h"
#include "model/llama.h"
#include "model/random_model.h"
#include "test_util.h"
#include "train/zero3_weights.h"

using namespace zerolora;
using zerolora::test::TempDir;
using zerolora::test::worker_comm;

namespace {

io::HfConfig test_config(bool tied, bool biases) {
  io::HfConfig c = model::preset_config("tiny");
  c.num_hidden_layers = 3;
  c.tie_word_embeddings = tied;
  c.attention_bias = biases;
  return c;
}

bool same_bytes(const core::Tensor& a, const core::Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

void expect_same_weight(const kernels::FrozenWeight& got, const kernels::FrozenWeight& want, const std::string& what) {
  if (want.nf4) {
    ASSERT_TRUE(got.nf4) << what;
    EXPECT_EQ(got.nf4->packed, want.nf4->packed) << what;
    EXPECT_EQ(got.nf4->absmax_q, want.nf4->absmax_q) << what;
    EXPECT_EQ(got.nf4->absmax2, want.nf4->absmax2) << what;
    EXPECT_EQ(got.nf4->absmax_offset, want.nf4->absmax_offset) << what;
    EXPECT_EQ(got.nf4->bias, want.nf4->bias) << what;
    return;
  }
  EXPECT_TRUE(same_bytes(got.weight, want.weight)) << what;
  EXPECT_EQ(got.has_bias(), want.has_bias()) << what;
  if (want.has_bias()) EXPECT_TRUE(same_bytes(got.bias, want.bias)) << what;
  EXPECT_EQ(got.fp16_inputs, want.fp16_inputs) << what;
}

struct Variant {
  const char* name;
  core::DType storage;
  bool nf4, fp16, tied, biases;
};

// Gathers a whole training pass and compares every part with the resident model; checks the memory.
void check_variant(const Variant& v) {
  dist::Comm& comm = worker_comm();
  const int world = comm.size();
  TempDir dir;
  const io::HfConfig cfg = test_config(v.tied, v.biases);
  model::write_random_model(dir.path(), cfg, {7, 0.02, true}, core::DType::F32);

  model::LlamaWeights ref = model::load_llama_weights(dir.path(), core::DType::F32, v.storage, v.nf4);
  if (v.fp16) model::round_frozen_weights_to_fp16(ref);

  train::Zero3Options o;
  o.storage = v.storage, o.nf4 = v.nf4, o.fp16 = v.fp16;
  o.param_persistence_threshold = 0;  // shard everything, norms included
  o.max_reuse_distance = 0;           // gather every part each time it is used
  train::Zero3FrozenWeights z(dir.path(), o, comm);

  // accounting: the slices are the model / world, up to per-tensor padding
  const train::Zero3Memory m = z.memory();
  const int64_t n_tensors = 3 + int64_t(cfg.num_hidden_layers) * (2 + 7 + (v.biases ? 4 : 0));
  EXPECT_NEAR(double(m.sharded_bytes), double(m.full_model_bytes - m.persistent_bytes) / world, double(n_tensors * 3 * 4 * world))
      << v.name;
  // one block as gathered: norms, weights (NF4: codes and scales), biases (NF4: bias and absmax offset kept
  // whole, persistent)
  int64_t layer_bytes = 0, nf4_bias_bytes = 0;
  for (const auto& w : ref.layers[0].proj) {
    if (w.nf4) layer_bytes += w.nf4->storage_bytes(), nf4_bias_bytes += int64_t(w.nf4->bias.size() * 4) + 4;
    else layer_bytes += int64_t(w.weight.nbytes() + w.bias.nbytes());
  }
  layer_bytes += int64_t(ref.layers[0].input_norm.nbytes() + ref.layers[0].post_norm.nbytes());
  EXPECT_EQ(m.persistent_bytes, int64_t(ref.final_norm.nbytes()) + nf4_bias_bytes * cfg.num_hidden_layers) << v.name;
  const int64_t padding = n_tensors * 3 * 4 * world;
  EXPECT_LE(m.gather_buffer_bytes, 2 * layer_bytes + int64_t(ref.embed.nbytes()) + padding) << v.name;
  EXPECT_GE(m.gather_buffer_bytes, 2 * layer_bytes + int64_t(ref.embed.nbytes())) << v.name;
  EXPECT_EQ(m.full_model_bytes, ref.frozen_bytes()) << v.name;
  if (world > 1) EXPECT_LT(m.sharded_bytes, m.full_model_bytes) << v.name;

  z.begin_pass(true);
  EXPECT_TRUE(same_bytes(z.acquire_embedding(), ref.embed)) << v.name;
  z.release();
  auto check_layer = [&](int l) {
    const model::LayerWeights& got = z.acquire_layer(l);
    const model::LayerWeights& want = ref.layers[size_t(l)];
    EXPECT_TRUE(same_bytes(got.input_norm, want.input_norm)) << v.name << " layer " << l;
    EXPECT_TRUE(same_bytes(got.post_norm, want.post_norm)) << v.name << " layer " << l;
    for (int j = 0; j < 7; ++j)
      expect_same_weight(got.proj[j], want.proj[j], std::string(v.name) + " layer " + std::to_string(l) + " proj " +
                                                        std::to_string(j));
    z.release();
  };
  for (int l = 0; l < cfg.num_hidden_layers; ++l) check_layer(l);
  expect_same_weight(z.acquire_lm_head(), ref.lm_head, std::string(v.name) + " lm_head");
  z.release();
  for (int l = cfg.num_hidden_layers - 1; l >= 0; --l) check_layer(l);
  z.end_pass();
  const train::Zero3Traffic t = z.traffic();
  EXPECT_EQ(t.gathers, 2 + 2 * cfg.num_hidden_layers) << v.name << ": every part gathered at each use";
  EXPECT_EQ(t.reuses, 0) << v.name;
  EXPECT_GE(t.prefetched, 1 + 2 * cfg.num_hidden_layers - 1) << v.name << ": the next part is prefetched";
}

}  // namespace

TEST(Zero3Worker, Bf16PartsGatherBitExact) {
  ZL_REQUIRE_MPI_WORKER();
  check_variant({"bf16 untied", core::DType::BF16, false, false, false, false});
}
TEST(Zero3Worker, F32WithBiasesGatherBitExact) {
  ZL_REQUIRE_MPI_WORKER();
  check_variant({"f32 biases tied", core::DType::F32, false, false, true, true});
}
TEST(Zero3Worker, Fp16RoundedPartsGatherBitExact) {
  ZL_REQUIRE_MPI_WORKER();
  check_variant({"fp16 untied", core::DType::F32, false, true, false, false});
}
TEST(Zero3Worker, Nf4PartsGatherBitExact) {
  ZL_REQUIRE_MPI_WORKER();
  check_variant({"nf4 untied", core::DType::BF16, true, false, false, true});
}

// Reuse: with DeepSpeed's default stage3_max_reuse_distance the last block is not gathered again at
// the forward/backward turn, and a tied embedding serves as the lm_head without a second gather.
TEST(Zero3Worker, RecentPartsAreReusedWithinTheReuseDistance) {
  ZL_REQUIRE_MPI_WORKER();
  TempDir dir;
  const io::HfConfig cfg = test_config(true, false);
  model::write_random_model(dir.path(), cfg, {3}, core::DType::F32);
  train::Zero3Options o;
  o.param_persistence_threshold = 0;
  train::Zero3FrozenWeights z(dir.path(), o, worker_comm());
  z.begin_pass(true);
  z.acquire_embedding(), z.release();
  for (int l = 0; l < 3; ++l) z.acquire_layer(l), z.release();
  z.acquire_lm_head(), z.release();
  for (int l = 2; l >= 0; --l) z.acquire_layer(l), z.release();
  z.end_pass();
  // gathered: embedding, blocks 0-2, block 0 again (its buffer went to block 2); reused: lm_head (tied),
  // blocks 2 and 1
  EXPECT_EQ(z.traffic().gathers, 5);
  EXPECT_EQ(z.traffic().reuses, 3);
}

// The model with the stream computes exactly what the resident model computes.
TEST(Zero3Worker, ModelPassEqualsResidentModel) {
  ZL_REQUIRE_MPI_WORKER();
  TempDir dir;
  const io::HfConfig cfg = test_config(false, false);
  model::write_random_model(dir.path(), cfg, {11, 0.05, true}, core::DType::F32);
  model::LlamaWeights ref = model::load_llama_weights(dir.path(), core::DType::F32, core::DType::BF16);
  train::Zero3Options o;
  o.storage = core::DType::BF16, o.param_persistence_threshold = 0;
  train::Zero3FrozenWeights z(dir.path(), o, worker_comm());

  model::LoraConfig lc;
  lc.r = 4, lc.dropout = 0, lc.target_modules = {"q_proj", "v_proj", "down_proj", "lm_head"};
  model::LoraLayout layout(cfg, lc);
  std::vector<float> params(size_t(layout.numel()));
  model::init_lora_params(layout, params.data(), 5);
  for (size_t i = 0; i < params.size(); ++i) params[i] += 0.01f * float(i % 7);  // B != 0
  const int64_t B = 2, T = 16;
  std::vector<int32_t> ids(B * T), labels(B * T);
  for (int64_t i = 0; i < B * T; ++i) ids[i] = int32_t((i * 37 + 11) % cfg.vocab_size), labels[i] = ids[i];
  model::ModelInput in;
  in.B = B, in.T = T, in.input_ids = ids.data(), in.labels = labels.data();

  model::TrainOptions opt;
  opt.gradient_checkpointing = true;
  model::LlamaModel<float> resident(ref, &layout, opt), streamed(z.skeleton(), &layout, opt);
  streamed.set_weight_stream(&z);
  std::vector<float> g1(params.size()), g2(params.size());
  const auto r1 = resident.forward_backward(in, params.data(), g1.data(), 1.0, 0);
  const auto r2 = streamed.forward_backward(in, params.data(), g2.data(), 1.0, 0);
  EXPECT_EQ(r1.loss_sum, r2.loss_sum);
  EXPECT_EQ(r1.tokens, r2.tokens);
  EXPECT_EQ(0, std::memcmp(g1.data(), g2.data(), g1.size() * sizeof(float)));
  // and an inference pass (no backward) through the same stream
  std::vector<float> l1(size_t(B * T * cfg.vocab_size)), l2(l1.size());
  resident.forward_logits(in, params.data(), l1.data());
  streamed.forward_logits(in, params.data(), l2.data());
  EXPECT_EQ(0, std::memcmp(l1.data(), l2.data(), l1.size() * sizeof(float)));
}

// ZeRO-3 on the GPU: model::DeviceWeightStream copies each gathered part into one of two slots of the model's
// context. Run with the host context here (slots in host memory, copies memcpy: the slot logic, the views, biases
// and the tied lm_head), and on a GPU by DeviceWeightStream.OnTheGpuEqualsResidentGpuModel below.
namespace {
struct StreamCase {
  io::HfConfig cfg;
  std::vector<float> params;
  std::vector<int32_t> ids, labels;
  model::ModelInput in;
};

void fill_case(StreamCase& c, const model::LoraLayout& layout) {
  c.params.resize(size_t(layout.numel()));
  model::init_lora_params(layout, c.params.data(), 5);
  for (size_t i = 0; i < c.params.size(); ++i) c.params[i] += 0.01f * float(i % 7);  // B != 0
  const int64_t B = 2, T = 16;
  c.ids.resize(size_t(B * T)), c.labels.resize(size_t(B * T));
  for (int64_t i = 0; i < B * T; ++i) c.ids[i] = int32_t((i * 37 + 11) % c.cfg.vocab_size), c.labels[i] = c.ids[i];
  c.in.B = B, c.in.T = T, c.in.input_ids = c.ids.data(), c.in.labels = c.labels.data();
}

// The model on ctx with the resident weights and with the slices streamed through a DeviceWeightStream: the same
// loss, gradients and logits bit for bit (the same kernels read the same bytes, from other addresses).
void expect_stream_equals_resident(dist::Comm& comm, const kernels::Context& ctx, bool tied, bool biases) {
  TempDir dir;
  StreamCase c;
  c.cfg = test_config(tied, biases);
  model::write_random_model(dir.path(), c.cfg, {13, 0.05, true}, core::DType::F32);
  const model::LlamaWeights host = model::load_llama_weights(dir.path(), core::DType::F32, core::DType::BF16);
  const model::LlamaWeights ref = model::to_device(host, ctx);
  train::Zero3Options o;
  o.storage = core::DType::BF16, o.param_persistence_threshold = 0, o.max_reuse_distance = 0;
  train::Zero3FrozenWeights z(dir.path(), o, comm);
  const model::LlamaWeights skeleton = model::to_device(z.skeleton(), ctx);
  model::DeviceWeightStream stream(z, int(c.cfg.num_hidden_layers), ctx);

  model::LoraConfig lc;
  lc.r = 4, lc.dropout = 0, lc.target_modules = {"q_proj", "v_proj", "down_proj", "lm_head"};
  model::LoraLayout layout(c.cfg, lc);
  fill_case(c, layout);
  model::TrainOptions opt;
  opt.gradient_checkpointing = true;
  model::LlamaModel<float> resident(ref, &layout, opt, ctx), streamed(skeleton, &layout, opt, ctx);
  streamed.set_weight_stream(&stream);
  const size_t n = c.params.size();
  kernels::DeviceArray<float> p(int64_t(n), ctx), g1(int64_t(n), ctx), g2(int64_t(n), ctx);
  kernels::copy_to_device(p.data(), c.params.data(), n * sizeof(float), ctx);
  kernels::fill_zero<float>(g1.data(), int64_t(n), ctx);
  kernels::fill_zero<float>(g2.data(), int64_t(n), ctx);
  const auto r1 = resident.forward_backward(c.in, p.data(), g1.data(), 1.0, 0);
  const auto r2 = streamed.forward_backward(c.in, p.data(), g2.data(), 1.0, 0);
  std::vector<float> h1(n), h2(n);
  kernels::copy_to_host(h1.data(), g1.data(), n * sizeof(float), ctx);
  kernels::copy_to_host(h2.data(), g2.data(), n * sizeof(float), ctx);
  EXPECT_EQ(r1.loss_sum, r2.loss_sum);
  EXPECT_EQ(r1.tokens, r2.tokens);
  EXPECT_EQ(0, std::memcmp(h1.data(), h2.data(), n * sizeof(float))) << "LoRA gradients differ";
  // memory: two slots, each the largest part (the embedding and lm_head are [V, C], a block its 2 norms, 7
  // weights and biases), each of a part's up to 13 tensors rounded up to 256 bytes
  const int64_t embed = int64_t(host.embed.nbytes());
  int64_t block = 0;
  for (const auto& w : host.layers[0].proj) block += int64_t(w.weight.nbytes() + w.bias.nbytes());
  block += int64_t(host.layers[0].input_norm.nbytes() + host.layers[0].post_norm.nbytes());
  const int64_t largest = std::max(embed, block);
  EXPECT_GE(stream.slot_bytes(), largest) << "a slot holds the largest part";
  EXPECT_LE(stream.slot_bytes(), 2 * (largest + 13 * 256)) << "at most two parts resident";
  // copies: every part once per use (forward: embedding, blocks, lm_head; backward: the blocks again); all but
  // the first part (the embedding) loaded ahead of their use
  const int64_t L = c.cfg.num_hidden_layers;
  EXPECT_EQ(stream.copied_bytes(), 2 * embed + 2 * L * block);
  EXPECT_EQ(stream.loaded_on_demand(), 1);
  EXPECT_EQ(stream.prefetched_parts(), 2 * L + 1);
}
}  // namespace

TEST(Zero3Worker, DeviceStreamOnTheHostContextEqualsResident) {
  ZL_REQUIRE_MPI_WORKER();
  expect_stream_equals_resident(worker_comm(), kernels::host(), false, false);
  expect_stream_equals_resident(worker_comm(), kernels::host(), true, true);
}

TEST(DeviceWeightStream, OnTheHostContextEqualsResident) {
  ZL_SKIP_IN_MPI_WORKER();
  dist::SoloComm solo;
  expect_stream_equals_resident(solo, kernels::host(), false, true);
}

// The benchmark's --offload-param upstream: the whole weights in host memory, handed out part by part.
TEST(DeviceWeightStream, OverAHostWeightStreamEqualsResident) {
  ZL_SKIP_IN_MPI_WORKER();
  TempDir dir;
  StreamCase c;
  c.cfg = test_config(true, true);
  model::write_random_model(dir.path(), c.cfg, {17, 0.05, true}, core::DType::F32);
  const model::LlamaWeights w = model::load_llama_weights(dir.path(), core::DType::F32, core::DType::BF16);
  model::HostWeightStream host_stream(w);
  model::DeviceWeightStream stream(host_stream, int(c.cfg.num_hidden_layers), kernels::host());
  model::LoraConfig lc;
  lc.r = 4, lc.dropout = 0, lc.target_modules = {"q_proj", "k_proj", "o_proj", "up_proj"};
  model::LoraLayout layout(c.cfg, lc);
  fill_case(c, layout);
  model::LlamaModel<float> resident(w, &layout, {}), streamed(host_stream.skeleton(), &layout, {});
  streamed.set_weight_stream(&stream);
  std::vector<float> g1(c.params.size()), g2(c.params.size());
  const auto r1 = resident.forward_backward(c.in, c.params.data(), g1.data(), 1.0, 0);
  const auto r2 = streamed.forward_backward(c.in, c.params.data(), g2.data(), 1.0, 0);
  EXPECT_EQ(r1.loss_sum, r2.loss_sum);
  EXPECT_EQ(0, std::memcmp(g1.data(), g2.data(), g1.size() * sizeof(float)));
  EXPECT_EQ(stream.loaded_on_demand(), 1);
}

TEST(DeviceWeightStream, OnTheGpuEqualsResidentGpuModel) {
  ZL_SKIP_IN_MPI_WORKER();
  if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no GPU visible: ZeRO-3 device stream test skipped";
  kernels::CudaContext gpu(0);
  dist::SoloComm solo;
  expect_stream_equals_resident(solo, gpu.ctx(), false, true);
  expect_stream_equals_resident(solo, gpu.ctx(), true, false);
}

namespace {
void expect_zero3_workers_pass(int ranks) {
  auto run = zerolora::test::run_mpi_workers(ranks, "Zero3Worker.*", {"ZEROLORA_COLLECTIVE_TIMEOUT_S=60"}, 240);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(zerolora::test::count_passed_ranks(run.output), ranks) << run.output;
  EXPECT_EQ(run.output.find("SKIPPED ]"), std::string::npos) << "worker tests did not run:\n" << run.output;
}
}  // namespace

TEST(Zero3Mpi, WorkersOnTwoRanks) {
  ZL_SKIP_IN_MPI_WORKER();
  expect_zero3_workers_pass(2);
}
TEST(Zero3Mpi, WorkersOnThreeRanks) {
  ZL_SKIP_IN_MPI_WORKER();
  expect_zero3_workers_pass(3);
}
