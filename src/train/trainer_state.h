// trainer_state.json, as HF Trainer writes it into output_dir and every checkpoint-<step>/ folder
// (deepspeed-peft-spec §3.2): JSON, indent 2, keys sorted. Tools that plot or inspect HF runs read ours.
//
// The file holds exactly the keys of HF's TrainerState dataclass (transformers 4.41-4.50: epoch ...
// stateful_callbacks), nothing else: HF's TrainerState.load_from_json passes every key to the dataclass
// constructor, so one extra key is a TypeError there (FastChat's auto-resume on our output_dir would crash).
// `best_global_step` (added in transformers 4.51) is read but not written: 4.44's constructor refuses it,
// and the newer ones default it to None.
//
// Our extras (run shape, fingerprint, memory and communication reports; the trainer decides the content)
// go to zerolora_state.json beside it, written and read together with it. Files from before that split
// (a top-level "zerolora" key in trainer_state.json) are still read.
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
  nlohmann::json zerolora = nlohmann::json::object();  // ours, free-form: zerolora_state.json (see above)
};

// The name of the file our extras go to, in the folder of trainer_state.json.
inline constexpr const char* kZeroloraStateFile = "zerolora_state.json";

// HF's stateful_callbacks value as HF Trainer writes it: {"TrainerControl": {"args": {should_*}, "attributes": {}}}.
// At a checkpoint HF saves with should_save true (and should_training_stop true at the last step); at the
// end of training (save_state) with should_training_stop true and the rest false.
nlohmann::json trainer_control_callbacks(bool should_save, bool should_training_stop);

nlohmann::json trainer_state_to_json(const TrainerState& state);

// HF's keys only (no "zerolora").
// Missing keys keep their defaults, unknown keys are ignored (older and newer HF versions differ); a known key
// with the wrong type is an Error naming "<where>:<key>". A legacy top-level "zerolora" object is read into
// state.zerolora.
TrainerState trainer_state_from_json(const nlohmann::json& j, const std::string& where);

// The file text: indent 2, keys sorted, trailing newline (HF: json.dumps(..., indent=2, sort_keys=True) + "\n").
std::string trainer_state_to_text(const TrainerState& state);

// Writes the file, and state.zerolora to zerolora_state.json in the same folder, with write_file_synced
// (inside a checkpoint's AtomicDir, or output_dir at the end).
void save_trainer_state(const TrainerState& state, const std::string& path);
// Reads the file and, when present, zerolora_state.json beside it (it takes precedence over a legacy
// "zerolora" key; a folder written by HF Trainer has neither, and state.zerolora stays empty).
TrainerState load_trainer_state(const std::string& path);

// zerolora_state.json's path for a trainer_state.json path.
std::string zerolora_state_path(const std::string& trainer_state_path);

}  // namespace zerolora::train
