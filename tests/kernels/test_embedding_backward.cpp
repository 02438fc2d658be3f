// kernels::embedding_backward (the scatter-add behind embed_tokens' LoRA gradient): against a plain loop with
// repeated ids, exact (each element is the same sum in the same m order); an id outside the table throws on the
// CPU. CudaEmbeddingBackward: the device kernel gives the CPU's bits (skips without a GPU).
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "core/error.h"
#include "kernels/context.h"
#include "kernels/kernels.h"

using namespace zerolora;

namespace {

struct Case {
  int64_t M = 37, V = 11, C = 5;
  std::vector<int32_t> ids;
  std::vector<float> dout, base;
  Case() {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1, 1);
    for (int64_t m = 0; m < M; ++m) ids.push_back(int32_t(rng() % uint32_t(V)));  // 37 rows over 11 ids: repeats
    for (int64_t i = 0; i < M * C; ++i) dout.push_back(u(rng));
    for (int64_t i = 0; i < V * C; ++i) base.push_back(u(rng));
  }
  std::vector<float> naive() const {
    std::vector<float> d = base;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t c = 0; c < C; ++c) d[size_t(ids[size_t(m)] * C + c)] += dout[size_t(m * C + c)];
    return d;
  }
};

}  // namespace

TEST(EmbeddingBackward, AddsRowsAtTheirIdsInOrder) {
  const Case k;
  std::vector<float> d = k.base;
  kernels::embedding_backward<float>(d.data(), k.ids.data(), k.dout.data(), k.M, k.V, k.C, kernels::host());
  EXPECT_EQ(d, k.naive());
  std::vector<int32_t> bad = k.ids;
  bad[3] = int32_t(k.V);
  EXPECT_THROW(kernels::embedding_backward<float>(d.data(), bad.data(), k.dout.data(), k.M, k.V, k.C,
                                                  kernels::host()),
               core::Error);
}

TEST(CudaEmbeddingBackward, MatchesTheCpuBits) {
  if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no GPU visible: CUDA embedding_backward test skipped";
  const Case k;
  kernels::CudaContext gpu(0);
  const kernels::Context& ctx = gpu.ctx();
  kernels::DeviceArray<float> d(k.V * k.C, ctx), dout(k.M * k.C, ctx);
  kernels::DeviceArray<int32_t> ids(k.M, ctx);
  kernels::copy_to_device(d.data(), k.base.data(), k.base.size() * sizeof(float), ctx);
  kernels::copy_to_device(dout.data(), k.dout.data(), k.dout.size() * sizeof(float), ctx);
  kernels::copy_to_device(ids.data(), k.ids.data(), k.ids.size() * sizeof(int32_t), ctx);
  kernels::embedding_backward<float>(d.data(), ids.data(), dout.data(), k.M, k.V, k.C, ctx);
  std::vector<float> got(size_t(k.V * k.C));
  kernels::copy_to_host(got.data(), d.data(), got.size() * sizeof(float), ctx);
  EXPECT_EQ(got, k.naive());
}
