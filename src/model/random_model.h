// Random models in HF format, so tests, benchmarks and the demo need no downloaded weights.
#pragma once
#include <string>
#include <vector>

#include "model/weights.h"

namespace zerolora::model {

// Presets: "tiny" (tests: hidden 64, 2 layers, GQA 4/2, vocab 256), "small" (demo: hidden 256, 4 layers,
// 8/4 heads, vocab 512), "tinyllama-1.1b" (hidden 2048, intermediate 5632, 22 layers, 32/4 heads,
// vocab 32000: the benchmark shape).
io::HfConfig preset_config(const std::string& preset);
std::vector<std::string> preset_names();

// Deterministic random tensors: matrices ~ N(0, init_std) (HF initializer_range 0.02 by default),
// norm weights 1 (or 1 + 0.1 N(0,1) with jitter_norms, which tests use so a wrong norm shows), biases
// ~ N(0, 0.02).
struct RandomInit {
  uint64_t seed = 0;
  double init_std = 0.02;
  bool jitter_norms = false;
};
TensorSource random_tensor_source(const RandomInit& init);

// Writes config.json + model.safetensors (F32 or BF16 tensors) into dir (created if needed).
void write_random_model(const std::string& dir, const io::HfConfig& config, const RandomInit& init,
                        core::DType file_dtype);

}  // namespace zerolora::model
