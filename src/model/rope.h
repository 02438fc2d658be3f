// RoPE inverse frequencies as HF computes them, including rope_scaling "linear" and "llama3".
#pragma once
#include <vector>

#include "io/hf_config.h"

namespace zerolora::model {

// inv_freq[i] for i < head_dim/2 (float32 arithmetic like HF's buffer, returned as double).
std::vector<double> rope_inv_freq(const io::HfConfig& c);

}  // namespace zerolora::model
