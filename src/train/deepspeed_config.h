// DeepSpeed JSON configs (--deepspeed), read as DeepSpeed reads them and with "auto" filled as HF Trainer
// fills it (deepspeed-peft-spec §1, fastchat-spec §4). FastChat's playground/deepspeed_config_s2.json and
// _s3.json work unchanged.
//
// Two steps, as in HF:
//   load_deepspeed_config(path)           the file as written: every known key parsed and type-checked,
//                                         DeepSpeed's code defaults for absent keys, "auto" kept as Auto
//   resolve_deepspeed_config(cfg, ...)    "auto" replaced from the flags / world size / hidden size, concrete
//                                         values that contradict the flags refused (all listed at once),
//                                         the batch rule TBS == MB x GAS x world checked
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "train/args.h"
#include "train/optimizer.h"  // AdamWConfig

namespace zerolora::train {

// A key that HF may fill: absent from the file, "auto", or a concrete value.
template <class T>
struct AutoOr {
  enum class Kind { Absent, Auto, Value };
  Kind kind = Kind::Absent;
  T value{};
  bool absent() const { return kind == Kind::Absent; }
  bool is_auto() const { return kind == Kind::Auto; }
  bool has_value() const { return kind == Kind::Value; }
};

// fp16 dynamic loss scaling (DeepSpeed DynamicLossScaler, spec §2.5).
struct LossScaleConfig {
  double static_scale = 0;          // fp16.loss_scale: 0 = dynamic; > 0 = this fixed scale
  int64_t initial_scale_power = 16;  // first scale = 2^power
  int64_t scale_window = 1000;       // clean steps before the scale doubles
  int64_t hysteresis = 2;            // overflows tolerated before halving
  bool consecutive_hysteresis = false;
  double min_scale = 1;
  // DeepSpeed 0.16 forwards these settings only when one of initial_scale_power, loss_scale_window,
  // min_loss_scale, hysteresis, consecutive_hysteresis is in the JSON; otherwise the scaler keeps its
  // constructor defaults: 2^32, window 1000, min 1, hysteresis 1. True when that happened.
  bool constructor_defaults = false;
};

struct OffloadConfig {
  std::string device = "none";  // none | cpu  (nvme refused)
  bool pin_memory = false;
};

// zero_optimization, DeepSpeed 0.16 code defaults.
struct ZeroConfig {
  int64_t stage = 0;
  bool overlap_comm = false;  // DeepSpeed default: true for stage 3, false otherwise (resolved at load)
  bool contiguous_gradients = true;
  bool reduce_scatter = true;
  int64_t reduce_bucket_size = 500000000;      // elements
  int64_t allgather_bucket_size = 500000000;   // elements
  OffloadConfig offload_optimizer;
  OffloadConfig offload_param;  // stage 3 only
  int64_t stage3_prefetch_bucket_size = 50000000;
  int64_t stage3_param_persistence_threshold = 100000;
  int64_t stage3_model_persistence_threshold = INT64_MAX;  // DeepSpeed: sys.maxsize
  int64_t stage3_max_live_parameters = 1000000000;
  int64_t stage3_max_reuse_distance = 1000000000;
  bool stage3_gather_16bit_weights_on_model_save = false;
  int64_t sub_group_size = 1000000000;
};

// The file as written.
struct DeepSpeedConfig {
  std::string path;
  AutoOr<int64_t> train_batch_size;
  AutoOr<int64_t> train_micro_batch_size_per_gpu;
  AutoOr<int64_t> gradient_accumulation_steps;
  AutoOr<double> gradient_clipping;

  bool has_fp16_section = false;
  AutoOr<bool> fp16_enabled;
  LossScaleConfig loss_scale;
  bool has_bf16_section = false;
  AutoOr<bool> bf16_enabled;

  ZeroConfig zero;  // the three keys below hold DeepSpeed's defaults here until resolved
  AutoOr<int64_t> zero_reduce_bucket_size;
  AutoOr<int64_t> zero_stage3_prefetch_bucket_size;
  AutoOr<int64_t> zero_stage3_param_persistence_threshold;

  // optimizer section: absent (HF builds AdamW from the flags), or AdamW / Adam with adam_w_mode true
  bool has_optimizer_section = false;
  std::string optimizer_type;
  AutoOr<double> optimizer_lr;
  AutoOr<std::array<double, 2>> optimizer_betas;
  AutoOr<double> optimizer_eps;
  AutoOr<double> optimizer_weight_decay;

  int64_t steps_per_print = 0;  // 0 = off (DeepSpeed >= 0.15.2 default)

  // Keys we read but that change nothing here, and keys we do not know (typos?), for the log.
  std::vector<std::string> ignored_keys;
  std::vector<std::string> unknown_keys;
};

// Everything resolved: what the trainer runs with under --deepspeed.
struct ResolvedDeepSpeedConfig {
  std::string path;
  int64_t world_size = 1;
  int64_t train_batch_size = 0;         // = micro_batch_per_rank x gradient_accumulation_steps x world_size
  int64_t micro_batch_per_rank = 0;
  int64_t gradient_accumulation_steps = 0;
  // Global L2 clip; 0 = off. FastChat's configs have no gradient_clipping key, so DeepSpeed's default 0
  // applies and --max_grad_norm is ignored, exactly as under FastChat; "auto" means --max_grad_norm.
  double gradient_clipping = 0.0;
  bool fp16 = false;
  bool bf16 = false;
  LossScaleConfig loss_scale;  // meaningful when fp16
  ZeroConfig zero;
  bool optimizer_from_config = false;  // false: HF's AdamW from the flags (FastChat's configs)
  double learning_rate = 5e-5;  // the peak rate the LR schedule multiplies
  AdamWConfig adamw;
  int64_t steps_per_print = 0;
  // One line each, for rank 0's log: semantics worth knowing (clipping off, fp16 scaler defaults, offload on
  // a CPU build, ...) and the ignored / unknown keys.
  std::vector<std::string> notes;
};

// Reads and checks the file. Refused with a core::Error naming "<path>:<key>": invalid JSON, a wrong type, a
// number that must be an integer and is not (5e8 is fine), "auto" where HF does not fill it, fp16 and bf16
// both true, an unknown ZeRO stage, nvme offload, offload_param below stage 3, optimizer types other than
// AdamW/Adam(adam_w_mode true), any scheduler section (WarmupLR, WarmupDecayLR, WarmupCosineLR: not supported
// yet — HF's schedule from --lr_scheduler_type is used, as FastChat's configs do), the batch keys in a
// combination DeepSpeed rejects.
DeepSpeedConfig load_deepspeed_config(const std::string& path);
DeepSpeedConfig parse_deepspeed_config(const std::string& json_text, const std::string& path_for_errors);

// Fills "auto" as HF (spec §1.5): micro batch = --per_device_train_batch_size, GAS =
// --gradient_accumulation_steps, train_batch_size = world x micro x GAS, gradient_clipping = --max_grad_norm,
// fp16/bf16.enabled = --fp16/--bf16, optimizer params = --learning_rate / --adam_beta1,2 / --adam_epsilon /
// --weight_decay, reduce_bucket_size = hidden^2, stage3_prefetch_bucket_size = 0.9 hidden^2,
// stage3_param_persistence_threshold = 10 hidden. Absent batch keys are derived with DeepSpeed's rules.
// Concrete values that disagree with the flags are refused in one Error listing every mismatch (as HF), and
// TBS != MB x GAS x world names all four numbers and the fix.
ResolvedDeepSpeedConfig resolve_deepspeed_config(const DeepSpeedConfig& config, const TrainArgs& args,
                                                 int64_t world_size, int64_t hidden_size);

}  // namespace zerolora::train
