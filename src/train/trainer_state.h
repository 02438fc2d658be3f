// trainer_state.json, as HF Trainer writes it into output_dir and every checkpoint-<step>/ folder
// (deepspeed-peft-spec §3.2): JSON, indent 2, keys sorted. Tools that plot or inspect HF runs read ours.
//
// Our extra key `zerolora` holds what an exact resume needs beyond HF's fields (data position, RNG states,
// a fingerprint of the data and flags); the trainer decides its content. Note: HF's own
// TrainerState.load_from_json passes every key to the dataclass constructor, so HF Trainer itself would
// refuse this file (unexpected keyword 'zerolora'); a zerolora checkpoint is not an HF-resumable one anyway
// (no DeepSpeed global_step folder, no optimizer.pt), and plain json readers are unaffected.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace zerolora::train {

struct TrainerState {
  double epoch = 0.0;  // epochs done + fraction of the current one
  int64_t global_step = 0;  // optimizer steps done (fp16-skipped steps included, as HF and DeepSpeed)
  int64_t max_steps = 0;
  int64_t logging_steps = 500;  // absolute values: ratios already resolved
  int64_t eval_steps = 500;
  int64_t save_steps = 500;
  int64_t train_batch_size = 0;  // per-device micro-batch size
  int64_t num_train_epochs = 0;
  int64_t num_input_tokens_seen = 0;
  double total_flos = 0.0;
  // Training logs {loss, grad_norm, learning_rate, epoch, step}, eval logs {eval_loss, ..., epoch, step},
  // and the final summary {train_runtime, ..., train_loss, epoch, step}; each a JSON object.
  std::vector<nlohmann::json> log_history;
  std::optional<double> best_metric;
  std::optional<std::string> best_model_checkpoint;
  bool is_local_process_zero = true;
  bool is_world_process_zero = true;
  bool is_hyper_param_search = false;
  std::optional<std::string> trial_name;
  nlohmann::json trial_params = nullptr;
  nlohmann::json stateful_callbacks = nlohmann::json::object();
  nlohmann::json zerolora = nlohmann::json::object();  // ours, free-form (see above)
};

nlohmann::json trainer_state_to_json(const TrainerState& state);

// Missing keys keep their defaults, unknown keys are ignored (older and newer HF versions differ); a known key
// with the wrong type is an Error naming "<where>:<key>".
TrainerState trainer_state_from_json(const nlohmann::json& j, const std::string& where);

// The file text: indent 2, keys sorted, trailing newline (HF: json.dumps(..., indent=2, sort_keys=True) + "\n").
std::string trainer_state_to_text(const TrainerState& state);

// Writes the file with write_file_synced (inside a checkpoint's AtomicDir, or output_dir at the end).
void save_trainer_state(const TrainerState& state, const std::string& path);
TrainerState load_trainer_state(const std::string& path);

}  // namespace zerolora::train
