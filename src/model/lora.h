// LoRA adapters exactly as PEFT defines them (deepspeed-peft-spec §4.1, fastchat-spec §1.7):
//   y = W x (+ b) + scale * B (A (dropout(x))),  A [r, in], B [out, r],  scale = alpha / r
//   (rsLoRA: alpha / sqrt(r)); dropout only on the LoRA branch input; A ~ U(+-1/sqrt(in)), B = 0.
// All trainable values live in one flat buffer (DESIGN decision 2): ZeRO partitions, checkpoints and
// collectives are slices of it. Each adapted projection is a slot with named offsets into the buffer.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "io/hf_config.h"

namespace zerolora::model {

// The projections LoRA can target, in a block's execution order; lm_head last (untied models only).
enum class Proj : int { Q = 0, K, V, O, Gate, Up, Down, LmHead, Count };
constexpr int kNumProj = int(Proj::Count);
const char* proj_name(Proj p);                       // "q_proj", ..., "lm_head"
bool proj_from_name(const std::string& name, Proj* out);

struct LoraConfig {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0.05;
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  bool use_rslora = false;
  std::string bias = "none";  // none | all | lora_only (LLaMA has no biases to train unless Qwen2/attention_bias)
  double scale() const;
};

// One adapted projection: A at [a_offset, a_offset + r*in), B at [b_offset, b_offset + out*r).
struct LoraSlot {
  int layer = -1;  // -1 for lm_head
  Proj proj = Proj::Q;
  int64_t in = 0, out = 0, r = 0;
  int64_t a_offset = 0, b_offset = 0;
  std::string peft_prefix() const;  // "base_model.model.model.layers.3.self_attn.q_proj"
};

// The layout of every adapter tensor in the flat buffer, in PEFT's module order (layer by layer,
// q k v o gate up down, then lm_head); A before B within a slot.
class LoraLayout {
 public:
  LoraLayout() = default;
  // Validates targets against the model (lm_head only on untied models) and throws core::Error with
  // the fix otherwise.
  LoraLayout(const io::HfConfig& model, const LoraConfig& lora);
  const LoraConfig& config() const { return lora_; }
  const std::vector<LoraSlot>& slots() const { return slots_; }
  int64_t numel() const { return numel_; }
  double scale() const { return lora_.scale(); }
  // slot for (layer, proj), or nullptr when that projection is not adapted
  const LoraSlot* find(int layer, Proj proj) const;

 private:
  LoraConfig lora_;
  std::vector<LoraSlot> slots_;
  std::vector<std::array<int, kNumProj>> index_;  // [layer][proj] -> slot index or -1
  int lm_head_slot_ = -1;
  int64_t numel_ = 0;
};

// PEFT's default initialisation into a flat buffer: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with
// a = sqrt(5)), B = 0. Deterministic for a seed.
void init_lora_params(const LoraLayout& layout, float* params, uint64_t seed);

}  // namespace zerolora::model
