#include "model/rope.h"

#include <cmath>

namespace zerolora::model {

std::vector<double> rope_inv_freq(const io::HfConfig& c) {
  const int64_t d = c.head_dim;
  std::vector<double> inv(d / 2);
  // HF: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)) in float32
  for (int64_t i = 0; i < d / 2; ++i)
    inv[i] = double(1.0f / std::pow(float(c.rope_theta), float(2 * i) / float(d)));
  const auto& rs = c.rope_scaling;
  if (rs.type == "linear") {
    // HF divides positions by the factor; dividing the frequencies is the same angle.
    for (auto& f : inv) f /= rs.factor;
  } else if (rs.type == "llama3") {
    const double old_ctx = double(rs.original_max_position_embeddings);
    const double low_wavelen = old_ctx / rs.low_freq_factor;
    const double high_wavelen = old_ctx / rs.high_freq_factor;
    for (auto& f : inv) {
      const double wavelen = 2 * M_PI / f;
      if (wavelen < high_wavelen) continue;  // high frequency: kept
      if (wavelen > low_wavelen) {           // low frequency: divided by the factor
        f = f / rs.factor;
        continue;
      }
      const double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      f = (1 - smooth) * f / rs.factor + smooth * f;
    }
  }
  return inv;
}

}  // namespace zerolora::model
