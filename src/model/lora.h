// LoRA adapters exactly as PEFT defines them (deepspeed-peft-spec §4.1, fastchat-spec §1.7):
//   y = W x (+ b) + scale * B (A (dropout(x))),  A [r, in], B [out, r],  scale = alpha / r
//   (rsLoRA: alpha / sqrt(r)); dropout only on the LoRA branch input; A ~ U(+-1/sqrt(in)), B = 0.
// embed_tokens (PEFT's lora.Embedding): y = E[ids] + scale * A^T[ids] B^T with lora_embedding_A [r, V] and
// lora_embedding_B [C, r], no dropout; PEFT initialises A = 0, B ~ N(0, 1). dA is the embedding's scatter-add
// (kernels::embedding_backward) of du = scale * dy B.
// --lora_bias all | lora_only (PEFT's `bias`): the projections' biases train too (every bias, or those of
// the adapted projections); they are bias slots in the same flat buffer, initialised from the base model.
// All trainable values live in one flat buffer (DESIGN decision 2): ZeRO partitions, checkpoints and
// collectives are slices of it. Each adapted projection is a slot with named offsets into the buffer.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "io/hf_config.h"

namespace zerolora::model {

// The projections LoRA can target, in a block's execution order, then lm_head and embed_tokens (both on
// tied models too, as PEFT allows: the LoRA branch sits beside the shared frozen matrix).
enum class Proj : int { Q = 0, K, V, O, Gate, Up, Down, LmHead, Embed, Count };
constexpr int kNumProj = int(Proj::Count);
const char* proj_name(Proj p);                       // "q_proj", ..., "lm_head", "embed_tokens"
bool proj_from_name(const std::string& name, Proj* out);
// Whether the model's projection p carries a bias (Qwen2's q/k/v, Llama's attention_bias q/k/v/o).
bool proj_has_bias(const io::HfConfig& c, Proj p);

struct LoraConfig {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0.05;
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  bool use_rslora = false;
  // none | all | lora_only: which projection biases train (none in Llama/Mistral, whose projections have no
  // bias; Qwen2's q/k/v; attention_bias's q/k/v/o). Saved as PEFT saves them: `all` writes every bias,
  // `lora_only` writes none (PEFT 0.12's key filter looks for "bias" beside a "lora_" name, which never
  // matches "....base_layer.bias", so its files and reloads lose the trained biases: zerolora does the same).
  std::string bias = "none";
  double scale() const;
};

// One adapted projection: A at [a_offset, a_offset + r*in), B at [b_offset, b_offset + out*r).
// embed_tokens: A is lora_embedding_A [r, in = V], B is lora_embedding_B [out = C, r].
struct LoraSlot {
  int layer = -1;  // -1 for lm_head and embed_tokens
  Proj proj = Proj::Q;
  int64_t in = 0, out = 0, r = 0;
  int64_t a_offset = 0, b_offset = 0;
  std::string peft_prefix() const;  // "base_model.model.model.layers.3.self_attn.q_proj"
  // The adapter file's names of A and B: "<prefix>.lora_A.weight" (".lora_embedding_A" for embed_tokens).
  std::string a_name() const;
  std::string b_name() const;
};

// One trainable projection bias [n] at [offset, offset + n), initialised from the base model's bias.
struct BiasSlot {
  int layer = 0;
  Proj proj = Proj::Q;
  int64_t n = 0, offset = 0;
  bool adapted = false;  // the projection has a LoRA slot (PEFT names it "...base_layer.bias")
  bool saved = false;    // written to / read from adapter files (--lora_bias all; lora_only: not, as PEFT)
  std::string base_name() const;  // "model.layers.3.self_attn.q_proj.bias" in the base model's files
  std::string peft_name() const;  // "base_model.model.model.layers.3.self_attn.q_proj.base_layer.bias"
};

// The layout of every adapter tensor in the flat buffer: LoRA slots in PEFT's module order (embed_tokens,
// then layer by layer q k v o gate up down, then lm_head; A before B within a slot), then the bias slots
// (layer by layer, q k v o) after all of them, so the LoRA slots stay one contiguous run.
class LoraLayout {
 public:
  LoraLayout() = default;
  // Validates targets and the bias mode against the model and throws core::Error with the fix otherwise.
  LoraLayout(const io::HfConfig& model, const LoraConfig& lora);
  const LoraConfig& config() const { return lora_; }
  const std::vector<LoraSlot>& slots() const { return slots_; }
  const std::vector<BiasSlot>& bias_slots() const { return bias_slots_; }
  int64_t numel() const { return numel_; }
  int64_t lora_numel() const { return lora_numel_; }  // the LoRA slots' run [0, lora_numel); biases after it
  // The base model folder the layout was made for (config.json's folder; empty for an in-memory config):
  // where init_lora_params reads the initial biases.
  const std::string& model_dir() const { return model_dir_; }
  double scale() const { return lora_.scale(); }
  // Every trainable tensor as (offset, shape), in the flat buffer's order (contiguous from 0 to numel()).
  std::vector<std::pair<int64_t, std::vector<int64_t>>> flat_tensors() const;
  // The same tensors in the order HF Trainer's optimizer.pt numbers them: its weight-decay group (every
  // lora_A / lora_B in PEFT's module order: embed_tokens, the layers, lm_head) then its no-decay group (the
  // parameters named "bias", in module order). That is the flat buffer's order; the first 2 * slots().size()
  // are the decay group.
  std::vector<std::pair<int64_t, std::vector<int64_t>>> peft_parameter_order() const { return flat_tensors(); }
  // slot for (layer, proj), or nullptr when that projection is not adapted
  const LoraSlot* find(int layer, Proj proj) const;
  // bias slot for (layer, proj), or nullptr when that bias does not train
  const BiasSlot* find_bias(int layer, Proj proj) const;

 private:
  LoraConfig lora_;
  std::vector<LoraSlot> slots_;
  std::vector<std::array<int, kNumProj>> index_;  // [layer][proj] -> slot index or -1
  std::vector<BiasSlot> bias_slots_;
  std::vector<std::array<int, 4>> bias_index_;  // [layer][q k v o] -> bias slot index or -1
  int lm_head_slot_ = -1, embed_slot_ = -1;
  int64_t numel_ = 0, lora_numel_ = 0;
  std::string model_dir_;
};

// PEFT's default initialisation into a flat buffer: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with
// a = sqrt(5)), B = 0; embed_tokens A = 0, B ~ N(0, 1) (a different stream than torch's: the values are
// random either way). Deterministic for a seed. Bias slots take the base model's biases, read from
// layout.model_dir() (core::Error when that folder lacks them).
void init_lora_params(const LoraLayout& layout, float* params, uint64_t seed);
// Only the bias slots: the base model's biases from layout.model_dir() (nothing when there are none).
void init_bias_params(const LoraLayout& layout, float* params);

}  // namespace zerolora::model
