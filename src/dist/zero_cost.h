// What ZeRO costs per rank: bytes sent per optimizer step and bytes of model state held. Pure arithmetic
// (reference/deepspeed-peft-spec.md §2.2, §2.3, §2.6), kept beside the partition plan so a measured run
// (CommStats) can be checked against the prediction and a memory plan made before loading anything.
#pragma once
#include <cstdint>

namespace zerolora::dist {

enum class Collective { AllReduce, ReduceScatter, AllGather, Broadcast };

// Bytes one rank sends for one collective under a bandwidth-optimal ring algorithm, for a payload of
// `payload_bytes` (all_reduce: the buffer; reduce_scatter: the whole input; all_gather: the whole
// output; broadcast: the buffer) over `world` ranks:
//   all_reduce 2(N-1)/N · payload, reduce_scatter and all_gather (N-1)/N · payload, broadcast payload
//   (pipelined; 0 for N = 1). This is the volume the ZeRO paper counts.
double ring_bytes_sent(Collective collective, int64_t payload_bytes, int world);

// One optimizer step of a LoRA run (gradient_accumulation_steps micro-steps). Element counts should be
// the padded ones (FlatPartition::padded_numel for stages 0-2, the sum of TensorPartition::padded_numel
// for stage 3), since the padding travels too.
//
// What each stage moves (DeepSpeed's schedule, grads_reduced_every_micro_step = true):
//   0: grads accumulate locally; one all_reduce of the trainable grads per step.
//   1: the same all_reduce (each rank then updates only its optimizer slice) + all_gather of the
//      updated trainable params.
//   2: reduce_scatter of the trainable grads every micro-step (no full gradient kept across
//      micro-steps) + all_gather of the updated params per step.
//   3: every micro-step, each non-persistent param (frozen base and trainable) is all-gathered twice
//      (before forward and before backward) and the trainable grads are reduce-scattered; after the
//      step the persistent trainable params are all-gathered again (DeepSpeed's _post_step). Persistent
//      frozen params were gathered once at start and never move again.
// zerolora (grads_reduced_every_micro_step = false) accumulates the LoRA grads locally and reduces them
// once per step in stages 2 and 3 too, keeps every trainable param persistent in stage 3, and gathers
// the embedding and lm_head once per micro-step (frozen_forward_only_elements; a tied embedding serves
// twice); with stage3_max_reuse_distance 0 it gathers exactly this, a larger distance gathers less.
struct ZeroStepShape {
  int stage = 0;
  int world = 1;
  int64_t gradient_accumulation_steps = 1;
  int64_t trainable_elements = 0;             // all LoRA params (grads are reduced for all of them)
  int64_t trainable_persistent_elements = 0;  // stage 3: the part of trainable_elements kept replicated
  int64_t frozen_gathered_elements = 0;       // stage 3: non-persistent frozen elements used in forward and backward
  int64_t frozen_forward_only_elements = 0;   // stage 3: non-persistent frozen elements gathered once per micro-step
  bool grads_reduced_every_micro_step = true; // DeepSpeed; zerolora reduces once per step
  double grad_bytes = 4;             // per gradient element on the wire
  double trainable_param_bytes = 4;  // per gathered trainable element
  double frozen_param_bytes = 2;     // per gathered frozen element (bf16 2, fp32 4, NF4+DQ ~0.516)
};

struct ZeroStepVolume {
  double all_reduce_bytes = 0;
  double reduce_scatter_bytes = 0;
  double all_gather_bytes = 0;
  double total() const { return all_reduce_bytes + reduce_scatter_bytes + all_gather_bytes; }
};

// Ring bytes one rank sends per optimizer step. Throws core::Error on a stage outside 0..3.
ZeroStepVolume zero_step_volume(const ZeroStepShape& shape);

// Model-state bytes held per rank (§2.6), without activations. Byte widths per element:
//   frozen b, trainable working param p, gradient g, optimizer state K (fp32 master + Adam m + v = 12,
//   or 8 when the working params are the fp32 masters themselves).
//   0: bΨb + (p+g+K)Ψa      1: bΨb + (p+g)Ψa + KΨa/N      2: bΨb + pΨa + (g+K)Ψa/N
//   3: (bΨb + (p+g+K)Ψa)/N + p·persistent trainable + b·(persistent frozen + gathered working set)
// With DeepSpeed's widths (b=2, p=2, g=2, K=12) these are the spec's LoRA formulas.
struct ZeroMemoryShape {
  int stage = 0;
  int world = 1;
  int64_t trainable_elements = 0;
  int64_t frozen_elements = 0;
  int64_t trainable_persistent_elements = 0;  // stage 3
  int64_t frozen_persistent_elements = 0;     // stage 3
  int64_t working_set_elements = 0;           // stage 3: frozen elements gathered at once (layer + prefetch)
  double frozen_bytes = 2;
  double trainable_param_bytes = 2;
  double grad_bytes = 2;
  double optimizer_bytes = 12;
};

double zero_model_state_bytes_per_rank(const ZeroMemoryShape& shape);

}  // namespace zerolora::dist
