// Small random models and batches for the model tests (no files needed).
#pragma once
#include <random>
#include <vector>

#include "model/llama.h"
#include "model/random_model.h"

namespace zerolora::test {

// A tiny untied GQA config whose sizes keep double-precision finite differences cheap.
inline io::HfConfig tiny_grad_config() {
  io::HfConfig c = model::preset_config("tiny");
  c.path = "<tiny>";
  c.vocab_size = 32, c.hidden_size = 16, c.intermediate_size = 24, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 4;
  c.tie_word_embeddings = false;
  return c;
}

inline model::LlamaWeights random_weights(const io::HfConfig& c, core::DType compute, core::DType storage,
                                          uint64_t seed = 1, double std = 0.3) {
  model::RandomInit init;
  init.seed = seed;
  init.init_std = std;
  init.jitter_norms = true;
  return model::build_llama_weights(c, compute, storage, model::random_tensor_source(init));
}

// Random A and B (B non-zero so gradients of A are not trivially zero).
template <typename S>
std::vector<S> random_lora_params(const model::LoraLayout& layout, uint64_t seed, double scale = 0.3) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0, scale);
  std::vector<S> p(layout.numel());
  for (auto& v : p) v = S(nd(rng));
  return p;
}

// B=2 rows of T tokens: row 1 right-padded to length len1; some labels ignored.
struct TestBatch {
  int64_t B = 2, T = 0;
  std::vector<int32_t> ids, labels, lengths;
  model::ModelInput input() const {
    model::ModelInput in;
    in.B = B, in.T = T, in.input_ids = ids.data(), in.labels = labels.data(), in.lengths = lengths.data();
    return in;
  }
};

inline TestBatch make_batch(int64_t T, int32_t len1, int32_t vocab, uint64_t seed) {
  TestBatch b;
  b.T = T;
  std::mt19937 rng(seed);
  b.ids.resize(2 * T);
  b.labels.resize(2 * T);
  b.lengths = {int32_t(T), len1};
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t t = 0; t < T; ++t) {
      const bool valid = t < b.lengths[r];
      b.ids[r * T + t] = valid ? int32_t(rng() % vocab) : 0;
      b.labels[r * T + t] = (valid && t >= 2) ? b.ids[r * T + t] : -100;
    }
  return b;
}

}  // namespace zerolora::test
