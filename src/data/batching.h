// Turning samples into fixed-shape micro-batches:
//   collate         one sample per row, right padding to model_max_length (what FastChat does: every
//                   row is padded at tokenisation) or to the longest row of the batch (dynamic padding);
//   collate_packed  several consecutive samples per row (--packing); each token attends only inside
//                   its own sample (block-diagonal causal: keys from kv_begin to itself) and positions
//                   restart at 0 for every sample, so a packed row computes what the separate rows would.
// Padding tokens have label -100; they are never attended to because each row's valid length is given.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "data/dataset.h"

namespace zerolora::data {

enum class Padding { MaxLength, Longest };

struct Batch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> input_ids, labels, positions;  // [B*T]; labels unshifted, -100 on padding
  std::vector<int32_t> lengths;   // [B] valid (non-pad) tokens per row, right padding
  std::vector<int32_t> kv_begin;  // [B*T] first position of the token's own sample in its row (packing); 0 otherwise
  int64_t target_tokens = 0;      // labels[t] != -100 for t >= 1 within each row: the predicted tokens
  int64_t samples = 0;            // samples in the batch (more than B when packed)
};

// One sample per row. Samples longer than model_max_length are an error (Dataset truncates them).
// pad_id: tokenizer::padding_id_or_fallback(tok) (FastChat pads with unk; Llama 3 has none).
Batch collate(const std::vector<const Sample*>& samples, Padding padding, int64_t model_max_length, int32_t pad_id);

// rows[b] = the samples packed into row b, in order. The first label of every sample is set to -100:
// it would be predicted from the previous sample's last token.
Batch collate_packed(const std::vector<std::vector<const Sample*>>& rows, Padding padding, int64_t model_max_length,
                     int32_t pad_id);

// Greedy packing plan: walks `order` and starts a new row whenever the next sample does not fit in
// model_max_length tokens. Returns, per row, the sample indices (values of `order`) in order.
// length_of(sample index) gives a sample's token count (at most model_max_length).
std::vector<std::vector<size_t>> plan_packing(const std::vector<size_t>& order,
                                              const std::function<size_t(size_t)>& length_of,
                                              int64_t model_max_length);

}  // namespace zerolora::data
