#include "train/trainer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include "core/error.h"
#include "core/op_profile.h"
#include "core/runtime.h"
#include "data/dataset.h"
#include "dist/consistency.h"
#include "dist/zero_cost.h"
#include "io/checkpoint_dir.h"
#include "kernels/context.h"
#include "kernels/kernels.h"
#include "model/adapter_io.h"
#include "model/device_weight_stream.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "train/deepspeed_config.h"
#include "train/epoch_batches.h"
#include "train/loss_scaler.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"
#include "train/progress.h"
#include "train/step.h"
#include "train/training_checkpoint.h"
#include "train/objective.h"
#include "train/zero3_weights.h"
#include "train/zero_engine.h"

namespace zerolora::train {

namespace fs = std::filesystem;

namespace {

// ------------------------------------------------------------------------------------------------
// Set-up shared by training and evaluation

// --device: a CUDA context on GPU (rank mod visible GPUs), or null for the CPU.
// cpu_only_reason: why this run cannot use the GPU ("" = it can); auto then picks the CPU and says why, an
// explicit --device cuda is an error naming it.
std::unique_ptr<kernels::CudaContext> open_device(DeviceChoice choice, int rank, Progress& log,
                                                  const std::string& cpu_only_reason = "") {
  if (choice == DeviceChoice::Cpu) return nullptr;
  if (!cpu_only_reason.empty()) {
    if (choice == DeviceChoice::Cuda)
      throw core::Error("--device cuda", cpu_only_reason + " does not run on the GPU yet",
                        "use a DeepSpeed config with stage 0-2, or --device cpu");
    if (kernels::cuda_device_count() > 0) log.message("device: cpu (" + cpu_only_reason + " runs on the CPU only)");
    return nullptr;
  }
  const int gpus = kernels::cuda_device_count();
  if (gpus == 0) {
    if (choice == DeviceChoice::Auto) return nullptr;
    throw core::Error("--device cuda", kernels::cuda_built() ? "no GPU is visible (" + kernels::cuda_devices_summary() + ")"
                                                            : std::string("this zerolora was built without the CUDA backend"),
                      kernels::cuda_built() ? "check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu"
                                            : "rebuild with the CUDA toolkit installed (cmake -DZEROLORA_CUDA=ON), or use --device cpu");
  }
  auto gpu = std::make_unique<kernels::CudaContext>(rank % gpus);
  log.message("device: cuda:" + std::to_string(gpu->index()) + " (" + gpu->name() + ")");
  return gpu;
}

uint64_t fnv1a(const std::string& bytes, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string file_hash(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)fnv1a(bytes));
  return buf;
}

model::LoraConfig lora_config_from(const TrainArgs& a) {
  model::LoraConfig lc;
  lc.r = a.lora_r;
  lc.alpha = double(a.lora_alpha);
  lc.dropout = a.lora_dropout;
  lc.target_modules = a.lora_target_modules;
  lc.use_rslora = a.use_rslora;
  lc.bias = to_string(a.lora_bias);
  return lc;
}

data::DataOptions data_options(const TrainArgs& a) {
  data::DataOptions o;
  o.conv_template = a.conv_template;
  o.model_max_length = a.model_max_length;
  o.lazy = a.lazy_preprocess;
  o.strict = a.strict_data;
  return o;
}

// An output_dir that cannot hold the run (a file, under a file, not writable), found before anything is
// loaded or tokenised. Returns "" when usable, else what is wrong; creates the folder when missing (rank 0
// writes into it from here on anyway).
std::string output_dir_problem(const std::string& dir) {
  const fs::path path(dir);
  std::error_code ec;
  fs::path existing = path;  // the nearest part of the path that exists must be a folder
  while (!existing.empty() && !fs::exists(existing, ec)) existing = existing.parent_path();
  if (existing.empty()) existing = ".";
  if (!fs::is_directory(existing, ec))
    return existing == path ? std::string("is a file, not a folder") : "is under " + existing.string() + ", which is a file";
  fs::create_directories(path, ec);
  if (ec) return "cannot be created: " + ec.message();
  const std::string probe = (path / (".zerolora-write-test-" + std::to_string(getpid()))).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd < 0) return std::string("is not writable: ") + std::strerror(errno);
  ::close(fd);
  ::unlink(probe.c_str());
  return "";
}

// metrics.jsonl when a run starts at `step` (a resume, or 0): the rows past it were logged by the interrupted
// run and are logged again now, and a final summary at `step` belongs to a run that ended there; both are
// dropped (the file is replaced atomically). Rows that are not JSON objects with a step are kept.
void trim_metrics_file(const std::string& path, int64_t step) {
  std::ifstream f(path);
  if (!f) return;
  std::string kept, line;
  bool dropped = false;
  while (std::getline(f, line)) {
    const nlohmann::json row = nlohmann::json::parse(line, nullptr, false);
    const bool has_step = row.is_object() && row.contains("step") && row["step"].is_number_integer();
    const int64_t s = has_step ? row["step"].get<int64_t>() : -1;
    if (has_step && (s > step || (s == step && row.contains("train_loss")))) {
      dropped = true;
      continue;
    }
    kept += line + "\n";
  }
  if (!dropped) return;
  const std::string tmp = path + ".tmp-" + std::to_string(getpid());
  io::write_file_synced(tmp, kept);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw core::Error(path, "could not be replaced: " + ec.message(), "check the folder's permissions");
}

// The training loss summed over the steps of a checkpoint's run so far, and their count: kept in
// zerolora_state.json; a checkpoint without it (older ones, HF's) gives the logged means weighted by the steps
// each covers, which leaves out the steps after the last log.
std::pair<double, int64_t> loss_sum_of(const TrainerState& s) {
  if (s.zerolora.contains("train_loss_sum") && s.zerolora["train_loss_sum"].is_number() &&
      s.zerolora.contains("train_loss_steps") && s.zerolora["train_loss_steps"].is_number_integer())
    return {s.zerolora["train_loss_sum"].get<double>(), s.zerolora["train_loss_steps"].get<int64_t>()};
  double sum = 0;
  int64_t last = 0;
  for (const auto& e : s.log_history)
    if (e.contains("loss") && e.contains("step") && e["loss"].is_number() && e["step"].is_number_integer()) {
      sum += e["loss"].get<double>() * double(e["step"].get<int64_t>() - last);
      last = e["step"].get<int64_t>();
    }
  return {sum, last};
}

// The final adapter in output_dir, all or nothing: written into a temp folder (a failure leaves output_dir
// as it was), then renamed into place file by file, adapter_config.json first, so that no moment shows
// adapter_model.safetensors without its config. A README.md of the user's stays (save_peft_adapter keeps a
// card it did not write).
void save_final_adapter(const std::string& output_dir, const model::LoraLayout& layout, const float* params,
                        const std::string& base_model) {
  io::AtomicDir tmp = io::AtomicDir::begin((fs::path(output_dir) / "final-adapter").string());
  const fs::path readme = fs::path(output_dir) / "README.md";
  if (fs::is_regular_file(readme)) fs::copy_file(readme, fs::path(tmp.temp_path()) / "README.md");
  model::save_peft_adapter(tmp.temp_path(), layout, params, base_model);
  for (const char* name : {"adapter_config.json", "adapter_model.safetensors", "README.md"}) {
    std::error_code ec;
    fs::rename(fs::path(tmp.temp_path()) / name, fs::path(output_dir) / name, ec);
    if (ec)
      throw core::Error((fs::path(output_dir) / name).string(), "the final adapter could not be put in place: " +
                            ec.message(), "make room for it (the checkpoint-N folders are complete; the same "
                                          "command writes the adapter again from the last one)");
  }
  io::fsync_dir(output_dir);
}  // tmp is not committed: its folder is removed here

// A data set whose every sample is masked would "train" at loss 0 and write an untrained adapter: an error,
// with the masked samples counted by reason.
void check_something_trains(const data::MaskingReport& report, const TrainArgs& a) {
  if (report.trained_tokens > 0) return;
  const bool truncation = report.by_issue.count(data::SampleIssue::TruncatedAway) > 0;
  throw core::Error(a.data_path, "no token of its " + std::to_string(report.samples_processed) +
                                     " samples is trained, nothing would be learnt (" + report.masked_out_by_reason() +
                                     "; see `zerolora data inspect`)",
                    std::string(truncation ? "raise --model_max_length (" + std::to_string(a.model_max_length) +
                                                 ") past the prompt and system text, and check the data: "
                                           : "check the data and --conv_template: ") +
                        "each conversation needs a human message followed by a gpt answer");
}

struct Loaded {
  io::HfConfig config;
  std::unique_ptr<tokenizer::Tokenizer> tok;
  std::optional<data::Dataset> train, eval;
  model::LlamaWeights resident;               // the frozen model (stages 0-2)
  std::unique_ptr<Zero3FrozenWeights> zero3;  // stage 3: this rank's slices, gathered per part
  int32_t pad_id = 0;
  const model::LlamaWeights& weights() const { return zero3 ? zero3->skeleton() : resident; }
  int64_t frozen_bytes() const { return zero3 ? zero3->memory().resident_bytes() : resident.frozen_bytes(); }
};

Zero3Options zero3_options(const TrainArgs& a, const ResolvedDeepSpeedConfig& ds) {
  Zero3Options o;
  o.storage = (a.bf16 || a.q_lora) && !ds.fp16 ? core::DType::BF16 : core::DType::F32;
  o.nf4 = a.q_lora;
  o.fp16 = ds.fp16;
  o.param_persistence_threshold = ds.zero.stage3_param_persistence_threshold;
  o.model_persistence_threshold = ds.zero.stage3_model_persistence_threshold;
  o.prefetch_bucket_size = ds.zero.stage3_prefetch_bucket_size;
  o.max_live_parameters = ds.zero.stage3_max_live_parameters;
  o.max_reuse_distance = ds.zero.stage3_max_reuse_distance;
  return o;
}

// ds: the resolved DeepSpeed config when there is one (stage 3 loads only this rank's slices).
Loaded load_everything(const TrainArgs& a, bool need_train_data, Progress& log,
                       const ResolvedDeepSpeedConfig* ds = nullptr, dist::Comm* comm = nullptr) {
  Loaded L;
  core::Timer t;
  L.tok = tokenizer::load_tokenizer(a.model_name_or_path);
  L.pad_id = tokenizer::padding_id_or_fallback(*L.tok);
  if (need_train_data) {
    L.train.emplace(data::Dataset::load(a.data_path, *L.tok, data_options(a)));
    log.message(L.train->report().summary(a.data_path));
  }
  if (!a.eval_data_path.empty()) {
    L.eval.emplace(data::Dataset::load(a.eval_data_path, *L.tok, data_options(a)));
    log.message(L.eval->report().summary(a.eval_data_path));
  }
  // --q_lora: the projections become NF4 (double quantised, bf16 compute); embeddings and lm_head bf16
  if (ds && ds->zero.stage == 3 && comm) {
    L.zero3 = std::make_unique<Zero3FrozenWeights>(a.model_name_or_path, zero3_options(a, *ds), *comm);
  } else {
    L.resident = model::load_llama_weights(a.model_name_or_path, core::DType::F32,
                                           (a.bf16 || a.q_lora) ? core::DType::BF16 : core::DType::F32, a.q_lora);
  }
  L.config = L.weights().config;
  char buf[384];
  std::snprintf(buf, sizeof buf, "loaded %s (%s, %.1f M params, frozen %s: %s%s) and data in %.1f s",
                a.model_name_or_path.c_str(), L.config.architecture.c_str(), double(L.weights().parameter_count()) / 1e6,
                a.q_lora ? "NF4 projections + bf16" : a.bf16 ? "bf16" : "f32",
                (std::to_string(L.frozen_bytes() >> 20) + " MiB").c_str(), L.zero3 ? " on this rank" : "", t.seconds());
  log.message(buf);
  if (L.zero3) {
    const Zero3Memory m = L.zero3->memory();
    std::snprintf(buf, sizeof buf, "ZeRO-3: frozen model %.1f MiB; this rank holds %.1f MiB of slices + %.1f MiB "
                  "persistent + %.1f MiB gather buffers", double(m.full_model_bytes) / 1048576.0,
                  double(m.sharded_bytes) / 1048576.0, double(m.persistent_bytes) / 1048576.0,
                  double(m.gather_buffer_bytes) / 1048576.0);
    log.message(buf);
  }
  return L;
}

// An evaluation pass over a data set, summed over ranks.
struct EvalSums {
  double token_loss_sum = 0;  // sum over tokens of the per-token loss
  int64_t tokens = 0;
  double batch_weighted_sum = 0;  // sum over batches of (batch size x the batch's token-mean loss)
  int64_t samples = 0;            // sum of the batch sizes of the batches that had tokens
  // HF's eval_loss: evaluation_loop gathers each batch's mean loss repeated batch_size times and takes the
  // mean of all of them (a batch without target tokens would be NaN there; it is left out here).
  double batch_mean() const { return samples > 0 ? batch_weighted_sum / double(samples) : NAN; }
  double token_mean() const { return tokens > 0 ? token_loss_sum / double(tokens) : NAN; }
  double loss(bool token_weighted) const { return token_weighted ? token_mean() : batch_mean(); }
};

EvalSums evaluate(Objective& objective, const float* params, data::Dataset& ds, const TrainArgs& a,
                  int32_t pad_id, dist::Comm& comm) {
  EpochBatchOptions o;
  o.world = comm.size(), o.rank = comm.rank(), o.seed = uint64_t(a.seed);
  o.per_device_batch_size = a.per_device_eval_batch_size, o.shuffle = false;
  o.packing = false, o.model_max_length = a.model_max_length;
  EvalSums e;
  const auto padding = a.padding == PaddingMode::Longest ? data::Padding::Longest : data::Padding::MaxLength;
  for (const auto& plan : epoch_micro_batches(ds, 0, o)) {
    data::Batch b = collate_micro_batch(ds, plan, padding, a.model_max_length, pad_id, false);
    const ObjectiveLoss r = objective.forward_backward(b, params, nullptr, 1.0, 0);
    e.token_loss_sum += r.loss_sum;
    e.tokens += r.tokens;
    if (r.tokens > 0) {
      e.batch_weighted_sum += double(b.B) * (r.loss_sum / double(r.tokens));
      e.samples += b.B;
    }
  }
  e.token_loss_sum = comm.all_reduce(e.token_loss_sum, dist::ScalarOp::Sum);
  e.tokens = comm.all_reduce(e.tokens, dist::ScalarOp::Sum);
  e.batch_weighted_sum = comm.all_reduce(e.batch_weighted_sum, dist::ScalarOp::Sum);
  e.samples = comm.all_reduce(e.samples, dist::ScalarOp::Sum);
  return e;
}

nlohmann::json args_json(const TrainArgs& a, int world, const std::string& data_hash, const std::string& model_hash) {
  nlohmann::json j;
  j["model_name_or_path"] = a.model_name_or_path;
  j["data_path"] = a.data_path;
  j["per_device_train_batch_size"] = a.per_device_train_batch_size;
  j["gradient_accumulation_steps"] = a.gradient_accumulation_steps;
  j["world_size"] = world;
  j["global_batch_size"] = a.per_device_train_batch_size * a.gradient_accumulation_steps * world;
  j["learning_rate"] = a.learning_rate;
  j["lr_scheduler_type"] = to_string(a.lr_scheduler_type);
  j["num_train_epochs"] = a.num_train_epochs;
  j["max_steps"] = a.max_steps;
  j["seed"] = a.seed;
  j["model_max_length"] = a.model_max_length;
  j["conv_template"] = a.conv_template;
  j["packing"] = a.packing;
  j["token_weighted_loss"] = a.token_weighted_loss;
  j["bf16"] = a.bf16;
  j["q_lora"] = a.q_lora;
  j["lora_r"] = a.lora_r;
  j["lora_alpha"] = a.lora_alpha;
  j["lora_dropout"] = a.lora_dropout;
  j["lora_target_modules"] = a.lora_target_modules;
  j["use_rslora"] = a.use_rslora;
  j["fingerprint"] = {{"model", model_hash}, {"data", data_hash}};
  return j;
}

// A resume that would silently mix two different runs is refused (returns why); harmless changes are
// explained.
std::string resume_incompatibility(const nlohmann::json& saved, const nlohmann::json& now, const std::string& ckpt,
                                   Progress& log) {
  auto differs = [&](const char* key) { return saved.contains(key) && saved[key] != now[key]; };
  std::string refused;
  for (const char* key : {"model_max_length", "conv_template", "packing", "seed", "lora_r", "lora_alpha",
                          "lora_target_modules", "use_rslora", "global_batch_size", "token_weighted_loss"})
    if (differs(key)) refused += std::string(refused.empty() ? "" : ", ") + key + " " + saved[key].dump() + " -> " + now[key].dump();
  if (saved.contains("fingerprint") && saved["fingerprint"] != now["fingerprint"]) {
    if (saved["fingerprint"]["model"] != now["fingerprint"]["model"])
      refused += std::string(refused.empty() ? "" : ", ") + "the model (config.json differs)";
    if (saved["fingerprint"]["data"] != now["fingerprint"]["data"])
      refused += std::string(refused.empty() ? "" : ", ") + "the training data (file contents differ)";
  }
  if (!refused.empty()) return refused;
  for (const char* key : {"learning_rate", "lr_scheduler_type", "num_train_epochs", "max_steps", "lora_dropout",
                          "per_device_train_batch_size", "world_size"})
    if (differs(key))
      log.message("note: " + std::string(key) + " changed from " + saved[key].dump() + " to " + now[key].dump() +
                  " since " + ckpt + "; training continues with the new value");
  return "";
}

// HF's speed_metrics: <split>_runtime rounded to 4 decimals, <split>_samples_per_second and
// <split>_steps_per_second (over that runtime) rounded to 3.
double round_to(double x, int decimals) {
  const double f = std::pow(10.0, decimals);
  return std::nearbyint(x * f) / f;
}

void add_speed_metrics(nlohmann::json& e, const std::string& split, double runtime, int64_t samples, int64_t steps) {
  e[split + "_runtime"] = round_to(runtime, 4);
  if (runtime <= 0) return;
  e[split + "_samples_per_second"] = round_to(double(samples) / runtime, 3);
  e[split + "_steps_per_second"] = round_to(double(steps) / runtime, 3);
}

// What the collectives of the optimizer steps sent from this rank (ring bytes, the ZeRO formulas' unit).
struct StepTraffic {
  int64_t steps = 0;
  double all_reduce = 0, reduce_scatter = 0, all_gather = 0;
};

void add_step_traffic(const dist::CommStats& s, StepTraffic* t) {
  t->steps += 1;
  t->all_reduce += s.all_reduce.ring_bytes_sent;
  t->reduce_scatter += s.reduce_scatter.ring_bytes_sent;
  t->all_gather += s.all_gather.ring_bytes_sent;
}

// Logs the measured bytes per step beside dist::zero_step_volume's prediction (equal when every
// ZeRO-3 part is gathered at each use, stage3_max_reuse_distance 0; below it when parts are reused).
nlohmann::json report_traffic(const StepTraffic& t, const dist::ZeroStepVolume& predicted, Progress& log) {
  const double n = double(t.steps);
  const double measured = (t.all_reduce + t.reduce_scatter + t.all_gather) / n;
  char buf[384];
  std::snprintf(buf, sizeof buf, "communication per step and rank: %.3f MB sent (all_reduce %.3f, reduce_scatter "
                "%.3f, all_gather %.3f); the ZeRO formula predicts %.3f MB", measured / 1e6, t.all_reduce / n / 1e6,
                t.reduce_scatter / n / 1e6, t.all_gather / n / 1e6, predicted.total() / 1e6);
  log.message(buf);
  return {{"steps", t.steps}, {"bytes_sent_per_step", measured},
          {"all_reduce_bytes_per_step", t.all_reduce / n}, {"reduce_scatter_bytes_per_step", t.reduce_scatter / n},
          {"all_gather_bytes_per_step", t.all_gather / n}, {"predicted_bytes_per_step", predicted.total()},
          {"predicted_all_reduce", predicted.all_reduce_bytes}, {"predicted_reduce_scatter", predicted.reduce_scatter_bytes},
          {"predicted_all_gather", predicted.all_gather_bytes}};
}

// ------------------------------------------------------------------------------------------------
// Checkpoints

// What moves from step to step and a checkpoint records besides the ZeRO engine's state.
struct RunCounters {
  TrainerState state;
  DynamicLossScaler scaler;
  int64_t skipped_steps = 0;  // fp16 overflow steps: counted in global_step, not in the LR schedule
  // the training loss over the whole run, resumes included (continued from the checkpoint's sum, so that a
  // resumed run adds the same numbers in the same order as an uninterrupted one)
  double run_loss_sum = 0;
  int64_t run_steps = 0;
  int64_t loss_steps_before = 0;  // run_steps when this process started (a resume's)
};

// The fixed facts of a run that its checkpoints are written with.
struct CheckpointSetting {
  const TrainArgs& args;
  const model::LoraLayout& layout;
  const TrainingPlan& plan;
  const nlohmann::json& run_args;
  double base_lr = 0;
};

// output_dir/loss_curve.svg from the log history. The curve is a picture for people, not part of a checkpoint or
// the adapter: failing to redraw it (a full disk, a folder in its place) is one warning line and never ends the
// run or unsays a saved checkpoint.
void redraw_loss_curve(const std::vector<nlohmann::json>& log_history, const std::string& output_dir,
                       Progress& progress) {
  const std::string path = (fs::path(output_dir) / "loss_curve.svg").string();
  try {
    write_loss_curve_svg(log_history, path);
  } catch (const core::Error& e) {
    progress.message(std::string("warning: ") + path + " was not updated (" + e.what() + ")");
  }
}

// checkpoint-<step> in output_dir; every rank calls it (the engine gathers the sharded moments). Returns false
// when the save failed and --continue_on_save_error let training go on. A save for a stop signal (stopping)
// must succeed: its failure always ends the run with the error.
bool save_checkpoint(const CheckpointSetting& c, ZeroEngine& engine, const RunCounters& r, int64_t step,
                     bool stopping, Progress& progress, dist::Comm& comm) {
  const TrainArgs& a = c.args;
  bool saved_ok = true;
  FullOptimizerState full = engine.gather_state();
  if (comm.rank() == 0) {
    TrainingSnapshot snap;
    snap.params = std::move(full.params);
    snap.exp_avg = std::move(full.exp_avg);
    snap.exp_avg_sq = std::move(full.exp_avg_sq);
    snap.optimizer_steps = full.steps;
    snap.adamw = engine.adamw();  // optimizer.pt's param_groups (HF's optimizer takes betas/eps/weight decay from there)
    snap.state = r.state;
    snap.state.zerolora["train_loss_sum"] = r.run_loss_sum, snap.state.zerolora["train_loss_steps"] = r.run_steps;
    // as HF's _save_checkpoint stores the TrainerControl (should_save set; training stops at the last step)
    snap.state.stateful_callbacks = trainer_control_callbacks(true, step >= c.plan.total_steps);
    snap.scheduler = {{"type", to_string(a.lr_scheduler_type)}, {"base_lr", c.base_lr},
                      {"total_steps", c.plan.total_steps}, {"warmup_steps", c.plan.warmup_steps}, {"last_step", step},
                      {"skipped_steps", r.skipped_steps}, {"loss_scaler", r.scaler.to_json()}};
    snap.args = c.run_args;
    const std::string dir = (fs::path(a.output_dir) / ("checkpoint-" + std::to_string(step))).string();
    bool committed = false;
    try {
      save_training_checkpoint(dir, snap, c.layout, a.model_name_or_path);
      committed = true;
      if (a.save_total_limit) io::rotate_checkpoints(a.output_dir, *a.save_total_limit);
      progress.message("saved " + dir);
    } catch (const core::Error& e) {
      if (!a.continue_on_save_error || stopping) throw;
      if (committed) {  // the checkpoint is whole; only removing the oldest ones failed
        progress.message("warning: saved " + dir + ", but older checkpoints were not removed for --save_total_limit (" +
                         e.what() + "); training continues (--continue_on_save_error)");
      } else {  // nothing of it is left (the temp folder is removed), the previous checkpoint is untouched
        saved_ok = false;
        const std::string last = io::find_last_checkpoint(a.output_dir);
        progress.message("warning: checkpoint-" + std::to_string(step) + " was not saved (" + e.what() +
                         "); training continues (--continue_on_save_error), the last complete checkpoint is " +
                         (last.empty() ? std::string("none") : last));
      }
    }
    if (committed) redraw_loss_curve(r.state.log_history, a.output_dir, progress);
  }
  comm.barrier();
  return saved_ok;
}

// ------------------------------------------------------------------------------------------------
// One training run: the constructor is the set-up, run() the loop of named steps.

class TrainingRun {
 public:
  TrainingRun(TrainArgs a, dist::Comm& comm);
  TrainingRun(const TrainingRun&) = delete;
  TrainingRun& operator=(const TrainingRun&) = delete;
  TrainResult run();

 private:
  // set-up, in this order
  void configure();        // output_dir, DeepSpeed config, sequence length, the same configuration on every rank
  void load();             // tokenizer, data, the frozen model
  void build_trainable();  // LoRA layout and the ZeRO engine (initialised or --lora_weight_path)
  void open_device_and_model();
  void plan();             // steps, schedule, the run's fingerprint
  void resume();           // continue from a checkpoint when there is one
  std::optional<TrainingSnapshot> find_checkpoint();
  void continue_from(const TrainingSnapshot& snapshot);
  void open_progress();    // metrics file, TensorBoard, the run's summary line

  // the loop
  struct Window {  // one optimizer step's micro-batches: micro[k0, k1) of an epoch
    const std::vector<MicroBatchPlan>& micro;
    int64_t epoch = 0, w = 0, windows = 0, k0 = 0, k1 = 0;
    bool epoch_end() const { return w + 1 == windows; }
  };
  struct StepOutcome {
    bool skipped = false;  // fp16 overflow: no update
    double loss = 0, grad_norm = 0, loss_scale = 0;
  };
  StepOutcome train_step(const Window& win);
  void log_skipped_step(double scale_was);
  void log_step(const StepOutcome& s);
  bool evaluation_due(const Window& win) const;
  void evaluate_now();
  bool checkpoint_or_stop(const Window& win);  // true: a stop signal ends the run (its checkpoint saved)
  TrainResult stopped(const std::string& why);
  TrainResult finish();
  void log_final_loss();
  void log_resources();
  void save_final();

  TrainArgs a_;
  dist::Comm& comm_;
  const int world_, rank_;
  Progress log_;
  std::optional<ResolvedDeepSpeedConfig> ds_;
  io::HfConfig peek_;
  double clip_ = 0, base_lr_ = 0;
  AdamWConfig adam_;
  bool fp16_ = false;
  std::optional<Loaded> L_;
  data::Dataset* train_set_ = nullptr;
  std::optional<model::LoraLayout> layout_;
  // declared before what holds device memory (the engine's mirrors, the device weights, the model): the context
  // is destroyed after them
  std::unique_ptr<kernels::CudaContext> gpu_;
  const kernels::Context* ctx_ = &kernels::host();
  std::unique_ptr<ZeroEngine> engine_;
  struct SyncReset {
    ~SyncReset() { core::set_op_timer_sync(nullptr); }
  } sync_reset_;
  model::LlamaWeights device_weights_;
  std::unique_ptr<model::DeviceWeightStream> device_stream_;  // stage 3 on the GPU: parts copied in per use
  std::unique_ptr<model::LlamaModel<float>> model_;
  std::unique_ptr<Objective> objective_, eval_objective_;
  EpochBatchOptions ebo_;
  TrainingPlan plan_;
  std::optional<LrSchedule> schedule_;
  data::Padding padding_ = data::Padding::MaxLength;
  nlohmann::json run_args_;
  std::string resume_dir_;
  RunCounters r_;
  std::unique_ptr<Progress> progress_;
  // per log interval
  double logged_loss_sum_ = 0;
  int64_t logged_steps_ = 0, tokens_since_ = 0;
  double flos_per_input_id_ = 0;
  TrainResult result_;
  StepTraffic traffic_;
  core::Timer since_log_, run_timer_;
  int64_t start_step_ = 0;
};

TrainingRun::TrainingRun(TrainArgs a, dist::Comm& comm)
    : a_(std::move(a)), comm_(comm), world_(comm.size()), rank_(comm.rank()), log_(rank_ != 0, 0, "") {
  configure();
  load();
  build_trainable();
  open_device_and_model();
  plan();
  resume();
  engine_->upload_params();  // the initial or resumed adapter, to the GPU mirror
  open_progress();
}

void TrainingRun::configure() {
  // first of all: a run that could not save anything must not spend minutes loading and tokenising
  const std::string out_problem = rank_ == 0 ? output_dir_problem(a_.output_dir) : "";
  if (comm_.all_reduce(int64_t(out_problem.empty() ? 0 : 1), dist::ScalarOp::Max) > 0)
    throw core::Error("--output_dir " + a_.output_dir, rank_ == 0 ? out_problem : "is not usable (rank 0 says why)",
                      "pass a writable folder path (it is created when missing)");
  core::set_num_threads(int(a_.num_threads));
  for (const auto& n : a_.notes) log_.message("note: " + n);

  // DeepSpeed config: batch rule against the real world size, "auto" from the flags.
  peek_ = io::load_hf_config((fs::path(a_.model_name_or_path) / "config.json").string());
  if (!a_.deepspeed.empty()) {
    ds_ = resolve_deepspeed_config(load_deepspeed_config(a_.deepspeed), a_, world_, peek_.hidden_size);
    for (const auto& n : ds_->notes) log_.message("deepspeed: " + n);
  }
  // As HF's tokenizer warns past the model's maximum length: positions beyond max_position_embeddings were
  // never trained (train_lora.py does not scale RoPE, train.py does). Padding every row to such a length
  // would only cost time and memory (padded positions change nothing), so rows are padded to the longest.
  if (a_.model_max_length > peek_.max_position_embeddings) {
    log_.message("warning: --model_max_length " + std::to_string(a_.model_max_length) + " is longer than the "
                 "model's max_position_embeddings " + std::to_string(peek_.max_position_embeddings) + " (" +
                 a_.model_name_or_path + "/config.json): positions past it were never trained, and running such "
                 "sequences may give poor results" +
                 (a_.padding == PaddingMode::MaxLength ? "; rows are padded to the longest of each batch, not to "
                                                         "--model_max_length" : ""));
    a_.padding = PaddingMode::Longest;
  }
  model::check_attention_span(peek_, a_.model_max_length, "--model_max_length",
                              "use --model_max_length <= " + std::to_string(peek_.sliding_window));
  clip_ = ds_ ? ds_->gradient_clipping : a_.max_grad_norm;
  base_lr_ = ds_ ? ds_->learning_rate : a_.learning_rate;
  adam_ = ds_ ? ds_->adamw : AdamWConfig{a_.adam_beta1, a_.adam_beta2, a_.adam_epsilon, a_.weight_decay};

  // Every rank must run the same configuration, or collectives would mismatch later.
  dist::check_same_on_all_ranks(comm_, "training arguments", args_json(a_, world_, "", "").dump());
  // Every rank must read the same model and data files: a node with a stale copy would train on other data.
  dist::check_same_files_on_all_ranks(comm_,
                                      dist::training_input_files(a_.model_name_or_path, {a_.data_path, a_.eval_data_path}));
}

void TrainingRun::load() {
  fp16_ = ds_ ? ds_->fp16 : a_.fp16;
  L_.emplace(load_everything(a_, true, log_, ds_ ? &*ds_ : nullptr, &comm_));
  if (fp16_) {
    if (!L_->zero3) model::round_frozen_weights_to_fp16(L_->resident);  // stage 3 rounds while loading
    log_.message("fp16: frozen weights and GEMM inputs in IEEE half (fp32 accumulation, fp32 master weights), "
                 "dynamic loss scaling with DeepSpeed's rules");
  }
  r_.scaler = DynamicLossScaler(ds_ ? ds_->loss_scale : LossScaleConfig{});
  train_set_ = &*L_->train;
  core::check(train_set_->size() > 0, a_.data_path, "holds no samples", "check the file");
  if (train_set_->report().samples_processed == train_set_->size()) check_something_trains(train_set_->report(), a_);
  dist::check_same_on_all_ranks(comm_, "training data size", std::to_string(train_set_->size()));
}

void TrainingRun::build_trainable() {
  layout_.emplace(L_->config, lora_config_from(a_));
  ZeroEngineOptions zo;
  zo.stage = ds_ ? int(ds_->zero.stage) : 0;
  zo.adamw = adam_;
  // stages 2/3: DeepSpeed's reduce_bucket_size (default 5e8 elements, "auto" hidden^2) and overlap_comm
  if (ds_) zo.reduce_bucket_elements = ds_->zero.reduce_bucket_size, zo.overlap_comm = ds_->zero.overlap_comm;
  engine_ = std::make_unique<ZeroEngine>(comm_, *layout_, zo);
  model::init_lora_params(*layout_, engine_->host_params(), uint64_t(a_.seed));
  if (!a_.lora_weight_path.empty()) {
    model::LoraConfig saved = model::read_peft_adapter_config(a_.lora_weight_path);
    core::check(saved.r == a_.lora_r && saved.target_modules == a_.lora_target_modules, "--lora_weight_path",
                "adapter " + a_.lora_weight_path + " has r " + std::to_string(saved.r) + " and other targets than "
                "--lora_r/--lora_target_modules", "pass the adapter's r and target_modules");
    model::load_peft_adapter(a_.lora_weight_path, *layout_, engine_->host_params());
    log_.message("initialised the adapter from " + a_.lora_weight_path);
  }
}

// --device cuda: weights, activations, LoRA params and grads on the GPU; the optimizer and the ZeRO
// collectives stay on the host (the engine brings the LoRA gradients down once per step, the params up once).
void TrainingRun::open_device_and_model() {
  gpu_ = open_device(a_.device, rank_, log_,
                     L_->zero3 && a_.q_lora ? "ZeRO stage 3 with --q_lora (NF4 weights are not streamed to the GPU)" : "");
  if (ds_ && (ds_->zero.offload_optimizer.device == "cpu" || ds_->zero.offload_param.device == "cpu")) {
    if (!gpu_)
      log_.message("deepspeed: offload to cpu requested: on the CPU all state already lives in host memory");
    if (gpu_ && ds_->zero.offload_param.device == "cpu")
      log_.message(L_->zero3 ? "deepspeed: offload_param cpu: the frozen weights stay in host memory and are copied "
                               "to the GPU part by part as the model uses them (two parts resident)"
                             : "deepspeed: offload_param applies to stage 3 only (DeepSpeed ignores it below): the "
                               "frozen weights are resident on the GPU");
  }
  if (gpu_) ctx_ = &gpu_->ctx();
  const kernels::Context& ctx = *ctx_;
  if (gpu_) device_weights_ = model::to_device(L_->weights(), ctx);
  if (gpu_ && L_->zero3) {
    // stage 3 on the GPU: this rank's slices stay in host memory (as with offload_param: cpu), each part is
    // gathered over the ranks on the host and copied into one of two device slots as the model reaches it
    device_stream_ = std::make_unique<model::DeviceWeightStream>(*L_->zero3, int(L_->config.num_hidden_layers), ctx);
    log_.message("ZeRO-3 on the GPU: frozen weights in host memory, each part copied to the GPU ahead of its use on "
                 "a second stream (two parts resident)");
  }
  if (gpu_) core::set_op_timer_sync([c = ctx_] { kernels::synchronize(*c); });  // ZEROLORA_PROFILE=1: device time per op
  if (gpu_) {
    // DeepSpeed's offload_optimizer: cpu keeps the optimizer on the host; otherwise, with one rank, the whole step
    // (norm, clipping, AdamW) runs on the GPU
    const bool offload_optimizer = ds_ && ds_->zero.offload_optimizer.device == "cpu";
    engine_->use_device(ctx, !offload_optimizer);
    log_.message(engine_->optimizer_on_device()
                     ? "optimizer: AdamW state and step on the GPU"
                     : std::string("optimizer: AdamW state and step on the host (") +
                           (offload_optimizer ? "offload_optimizer: cpu" : "several ranks: the ZeRO collectives run "
                                                                           "on host buffers") + ")");
  }

  model::TrainOptions mopt;
  mopt.gradient_checkpointing = a_.gradient_checkpointing;
  if (gpu_) mopt.loss_chunk_rows = model::gpu_loss_chunk_rows(L_->config.vocab_size);
  model_ = std::make_unique<model::LlamaModel<float>>(gpu_ ? device_weights_ : L_->weights(), &*layout_, mopt, ctx);
  if (L_->zero3) model_->set_weight_stream(device_stream_ ? static_cast<model::FrozenWeightStream*>(device_stream_.get())
                                                         : L_->zero3.get());
  objective_ = std::make_unique<SupervisedFineTuning>(*model_, a_.packing);
  eval_objective_ = std::make_unique<SupervisedFineTuning>(*model_, false);
  // on the GPU the gradients reach the host after the backward pass: no buckets during it
  if (engine_->reduces_during_backward())
    model_->set_gradient_ready_hook([this](int64_t from) { engine_->gradients_final_from(from); });
}

void TrainingRun::plan() {
  // steps per epoch, total, warmup, intervals (HF arithmetic)
  ebo_.world = world_, ebo_.rank = rank_, ebo_.seed = uint64_t(a_.seed);
  ebo_.per_device_batch_size = a_.per_device_train_batch_size, ebo_.packing = a_.packing;
  ebo_.model_max_length = a_.model_max_length;
  plan_ = plan_training(a_, epoch_rows(*train_set_, 0, ebo_), world_);
  schedule_.emplace(a_.lr_scheduler_type, base_lr_, plan_.total_steps, plan_.warmup_steps);
  padding_ = a_.padding == PaddingMode::Longest ? data::Padding::Longest : data::Padding::MaxLength;
  const std::string model_hash = file_hash((fs::path(a_.model_name_or_path) / "config.json").string());
  const std::string data_hash = file_hash(a_.data_path);
  run_args_ = args_json(a_, world_, data_hash, model_hash);
}

// FastChat resumes automatically from the highest checkpoint-N; or --resume_from_checkpoint.
void TrainingRun::resume() {
  if (const std::optional<TrainingSnapshot> snapshot = find_checkpoint()) continue_from(*snapshot);
  TrainerState& state = r_.state;
  state.max_steps = plan_.total_steps;
  state.logging_steps = plan_.logging_steps, state.eval_steps = plan_.eval_steps, state.save_steps = plan_.save_steps;
  state.train_batch_size = a_.per_device_train_batch_size;
  state.num_train_epochs = plan_.epochs;
  state.is_world_process_zero = rank_ == 0;
  state.zerolora = {{"world_size", world_}, {"zero_stage", engine_->stage()}, {"seed", a_.seed},
                    {"rng", "stateless: dropout masks and data order derive from (seed, step, micro-batch, rank)"},
                    {"steps_per_epoch", plan_.steps_per_epoch}, {"fingerprint", run_args_["fingerprint"]}};
}

// The checkpoint this run continues, read, or none; refuses one of another run.
std::optional<TrainingSnapshot> TrainingRun::find_checkpoint() {
  if (rank_ == 0) io::remove_stale_temp_dirs(a_.output_dir);
  if (a_.resume_mode == ResumeMode::Path) {
    resume_dir_ = a_.resume_from_checkpoint;
    core::check(fs::is_directory(resume_dir_), "--resume_from_checkpoint " + resume_dir_,
                fs::exists(resume_dir_) ? "is not a folder" : "does not exist",
                "pass a checkpoint-N folder of an earlier run, or True for the last one in --output_dir");
  } else if (a_.resume_mode != ResumeMode::Never) {
    resume_dir_ = io::find_last_checkpoint(a_.output_dir);
    // HF's train(resume_from_checkpoint=True) raises this ValueError
    core::check(!(a_.resume_mode == ResumeMode::Latest && resume_dir_.empty()), "--resume_from_checkpoint True",
                "No valid checkpoint found in output directory (" + a_.output_dir + ")",
                "drop the flag, or pass --resume_from_checkpoint False, to start a fresh run");
  }
  // Found in output_dir without being asked for: it may be another run's, and the user must hear that
  const bool earlier_run = a_.resume_mode == ResumeMode::Auto;
  const std::string earlier = "an earlier run's checkpoint found in --output_dir (FastChat resumes the last "
                              "checkpoint-N there automatically)";
  const std::string not_resuming = "--overwrite_output_dir True starts over in this output_dir, "
                                   "--resume_from_checkpoint False starts fresh, or use a new --output_dir";
  std::optional<TrainingSnapshot> snapshot;
  if (!resume_dir_.empty()) {
    // the settings first: another LoRA shape or model would otherwise stop on a tensor shape
    std::string why;
    if (std::ifstream f(fs::path(resume_dir_) / "training_args.json"); f) {
      nlohmann::json saved = nlohmann::json::parse(f, nullptr, false);  // damaged: load_training_checkpoint says so
      if (saved.is_object()) why = resume_incompatibility(saved, run_args_, resume_dir_, log_);
    }
    if (!why.empty() && !(a_.overwrite_output_dir && earlier_run))
      throw core::Error(resume_dir_, "cannot resume " + (earlier_run ? earlier : std::string("this checkpoint")) +
                                         ": this run differs from it in " + why,
                        (earlier_run ? not_resuming + "; to continue that run, restore its settings"
                                     : std::string("restore the checkpoint's settings")) +
                            " (global batch = per_device_train_batch_size x gradient_accumulation_steps x ranks "
                            "must stay the same)");
    if (!why.empty()) {
      log_.message("--overwrite_output_dir: " + resume_dir_ + " belongs to another run (" + why + "); starting over");
    } else {
      try {
        snapshot = load_training_checkpoint(resume_dir_, *layout_);
      } catch (const core::Error& e) {
        if (!earlier_run) throw;
        throw core::Error("cannot resume " + earlier + ": " + e.what() + "; not to resume it: " + not_resuming);
      }
    }
  }
  return snapshot;
}

void TrainingRun::continue_from(const TrainingSnapshot& snap) {
  TrainerState& state = r_.state;
  engine_->load_state(snap);
  state = snap.state;
  std::tie(r_.run_loss_sum, r_.run_steps) = loss_sum_of(snap.state);
  r_.loss_steps_before = r_.run_steps;
  r_.skipped_steps = snap.scheduler.value("skipped_steps", int64_t(0));
  if (snap.scheduler.contains("loss_scaler"))
    r_.scaler = DynamicLossScaler::from_json(snap.scheduler["loss_scaler"], resume_dir_ + "/scheduler.json");
  log_.message("resumed from " + resume_dir_ + " at step " + std::to_string(state.global_step));
  if (snap.from_hf_trainer) {  // an HF Trainer checkpoint: its schedule should be this run's
    const double ours = schedule_->lr(state.global_step - r_.skipped_steps), hf = snap.scheduler.value("last_lr", ours);
    if (std::abs(hf - ours) > 1e-6 * std::max(std::abs(ours), 1e-12))
      log_.message("note: " + resume_dir_ + "/scheduler.pt has learning rate " + std::to_string(hf) + " at step " +
                   std::to_string(state.global_step) + ", this run's schedule " + std::to_string(ours) +
                   "; training continues with this run's (--learning_rate, --lr_scheduler_type, --warmup_steps, "
                   "--max_steps)");
  }
}

void TrainingRun::open_progress() {
  if (rank_ == 0) fs::create_directories(a_.output_dir);
  comm_.barrier();
  if (rank_ == 0) trim_metrics_file(a_.metrics_file, r_.state.global_step);
  const std::string tensorboard_dir =
      rank_ == 0 && report_to_tensorboard(a_.report_to)
          ? (a_.logging_dir.empty() ? default_tensorboard_dir(a_.output_dir, std::time(nullptr)) : a_.logging_dir)
          : "";
  progress_ = std::make_unique<Progress>(rank_ != 0, plan_.total_steps, rank_ == 0 ? a_.metrics_file : "", tensorboard_dir);
  const int64_t numel = layout_->numel();
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "training: %zu samples, %lld steps (%lld per epoch, %lld epochs), global batch %lld (%lld x %lld "
                "accumulation x %d ranks), ZeRO stage %d, %lld trainable params (%.4f%%), lr %g %s warmup %lld",
                train_set_->size(), (long long)plan_.total_steps, (long long)plan_.steps_per_epoch,
                (long long)plan_.epochs, (long long)(a_.per_device_train_batch_size * a_.gradient_accumulation_steps * world_),
                (long long)a_.per_device_train_batch_size, (long long)a_.gradient_accumulation_steps, world_,
                engine_->stage(), (long long)numel, 100.0 * double(numel) / double(L_->weights().parameter_count()),
                base_lr_, to_string(a_.lr_scheduler_type).c_str(), (long long)plan_.warmup_steps);
  progress_->message(buf);

  // HF's total_flos: Trainer adds model.floating_point_ops(inputs) = 6 x input_ids.numel() x
  // num_parameters(exclude_embeddings=True) per micro-batch (summed over ranks); the PEFT-wrapped model counts
  // every parameter but the nn.Embedding ones: the frozen model without embed_tokens (a tied lm_head is that
  // same tensor), the LoRA A/B weights included. QLoRA counts NF4 weights at their logical size, as HF does.
  const double non_embedding_params = double(L_->weights().parameter_count()) -
                                      double(L_->config.vocab_size) * double(L_->config.hidden_size) + double(numel);
  flos_per_input_id_ = 6.0 * non_embedding_params;
  start_step_ = r_.state.global_step;
  // ZEROLORA_PROFILE=1: wall time per kind of op over the run, logged at the end
  const char* profile_env = std::getenv("ZEROLORA_PROFILE");
  core::set_op_profiling(profile_env && std::string(profile_env) == "1");
  core::reset_op_profile();
  since_log_.reset(), run_timer_.reset();
}

TrainResult TrainingRun::run() {
  // a stop signal during start-up (loading, resuming): nothing new to save; the same command resumes
  if (comm_.all_reduce(int64_t(stop_requested() ? 1 : 0), dist::ScalarOp::Max) > 0)
    return stopped("stop signal received before the first step: nothing new to save; run the same command again "
                   "to resume");
  const int64_t ga = a_.gradient_accumulation_steps;
  TrainerState& state = r_.state;
  for (int64_t epoch = state.global_step / std::max<int64_t>(plan_.steps_per_epoch, 1);
       epoch < plan_.epochs && state.global_step < plan_.total_steps; ++epoch) {
    const std::vector<MicroBatchPlan> micro = epoch_micro_batches(*train_set_, epoch, ebo_);
    const int64_t windows = std::max<int64_t>(int64_t(micro.size()) / ga, 1);
    const int64_t first_window = state.global_step - epoch * plan_.steps_per_epoch;
    for (int64_t w = std::max<int64_t>(first_window, 0); w < windows && state.global_step < plan_.total_steps; ++w) {
      const int64_t k0 = w * ga;
      const Window win{micro, epoch, w, windows, k0, int64_t(micro.size()) < ga ? int64_t(micro.size()) : k0 + ga};
      const StepOutcome s = train_step(win);
      if (s.skipped) continue;
      log_step(s);
      if (evaluation_due(win)) evaluate_now();
      // --lazy_preprocess: the first epoch has tokenised every sample once (each rank its share)
      if (a_.lazy_preprocess && epoch == 0 && win.epoch_end() && start_step_ == 0 &&
          comm_.all_reduce(train_set_->report().trained_tokens, dist::ScalarOp::Sum) == 0)
        check_something_trains(train_set_->report(), a_);
      if (checkpoint_or_stop(win))
        return stopped("stop signal received: checkpoint-" + std::to_string(state.global_step) +
                       " saved; run the same command again to resume");
    }
  }
  return finish();
}

// Forward and backward of the window's micro-batches, the gradient sum over ranks, the update.
TrainingRun::StepOutcome TrainingRun::train_step(const Window& win) {
  TrainerState& state = r_.state;
  std::vector<data::Batch> batches;
  int64_t window_tokens = 0;
  for (int64_t k = win.k0; k < win.k1; ++k) {
    batches.push_back(collate_micro_batch(*train_set_, win.micro[size_t(k)], padding_, a_.model_max_length, L_->pad_id,
                                          a_.packing));
    window_tokens += batches.back().target_tokens;
  }
  LossNormalisation norm;
  norm.token_weighted = a_.token_weighted_loss;
  norm.accumulation_steps = win.k1 - win.k0;
  norm.world_size = world_;
  norm.loss_scale = fp16_ ? r_.scaler.scale() : 1.0;
  if (a_.token_weighted_loss) norm.window_tokens_all_ranks = comm_.all_reduce(window_tokens, dist::ScalarOp::Sum);

  comm_.reset_stats();  // this step's collectives, for the communication report
  engine_->begin_step();
  double logged = 0;
  int64_t step_tokens = 0, step_input_ids = 0;
  for (size_t k = 0; k < batches.size(); ++k) {
    const data::Batch& b = batches[k];
    const uint64_t seed = uint64_t(a_.seed) * 0x9e3779b97f4a7c15ull ^
                          (uint64_t(state.global_step) << 20) ^ (uint64_t(k) << 8) ^ uint64_t(rank_);
    engine_->before_micro_batch(k + 1 == batches.size());
    logged += run_micro_batch(*objective_, b, engine_->model_params(), engine_->model_grads(), norm, seed).logged;
    for (int32_t len : b.lengths) step_tokens += len;
    step_input_ids += int64_t(b.input_ids.size());  // padding included, as HF's estimate_tokens
  }
  StepOutcome s;
  s.loss = comm_.all_reduce(logged, dist::ScalarOp::Sum);
  engine_->reduce_gradients();
  if (fp16_) {
    if (engine_->gradients_overflow()) {
      const double scale_was = r_.scaler.scale();
      r_.scaler.update(true);  // throws DeepSpeed's error at the minimum scale
      log_skipped_step(scale_was);
      s.skipped = true;
      return s;
    }
    engine_->unscale_gradients(1.0 / r_.scaler.scale());
  }
  s.grad_norm = engine_->grad_norm();
  if (!std::isfinite(s.loss) || !std::isfinite(s.grad_norm)) {
    std::string ids;
    for (int64_t k = win.k0; k < win.k1; ++k)
      for (const auto& row : win.micro[size_t(k)])
        for (size_t i : row) ids += (ids.empty() ? "" : ", ") + train_set_->get(i).id;
    throw core::Error("step " + std::to_string(state.global_step + 1),
                      "non-finite loss (" + std::to_string(s.loss) + ") or gradient norm (" +
                          std::to_string(s.grad_norm) + ") on rank " + std::to_string(rank_) + ", samples " + ids,
                      "lower --learning_rate, check those samples, or resume from the last checkpoint; nothing "
                      "was saved from this step");
  }
  engine_->optimizer_step(schedule_->lr(state.global_step - r_.skipped_steps), clip_coefficient(s.grad_norm, clip_));
  s.loss_scale = r_.scaler.scale();
  if (fp16_) r_.scaler.update(false);
  add_step_traffic(comm_.stats(), &traffic_);
  state.global_step += 1;
  state.epoch = double(win.epoch) + double(win.w + 1) / double(win.windows);
  state.num_input_tokens_seen += comm_.all_reduce(step_tokens, dist::ScalarOp::Sum);
  state.total_flos += flos_per_input_id_ * double(comm_.all_reduce(step_input_ids, dist::ScalarOp::Sum));
  tokens_since_ += step_tokens;
  logged_loss_sum_ += s.loss, logged_steps_ += 1, r_.run_loss_sum += s.loss, r_.run_steps += 1;
  return s;
}

// an fp16 overflow: counted in global_step, not in the LR schedule
void TrainingRun::log_skipped_step(double scale_was) {
  TrainerState& state = r_.state;
  state.global_step += 1, r_.skipped_steps += 1;
  nlohmann::json e = {{"step", state.global_step}, {"skipped", true}, {"loss_scale", scale_was},
                      {"next_loss_scale", r_.scaler.scale()}, {"epoch", state.epoch}};
  state.log_history.push_back(e);
  progress_->log(e);
}

void TrainingRun::log_step(const StepOutcome& s) {
  TrainerState& state = r_.state;
  // HF logs lr_scheduler.get_last_lr() after scheduler.step(): the rate of the NEXT update, lr(global_step)
  // (0.009667 at step 1 of a 30-step linear decay from 0.01, which step 1 applied)
  const double logged_lr = schedule_->lr(state.global_step - r_.skipped_steps);
  const double elapsed = run_timer_.seconds();
  const double tps = double(tokens_since_) * world_ / std::max(since_log_.seconds(), 1e-9);
  const double eta = elapsed / double(state.global_step - start_step_) * double(plan_.total_steps - state.global_step);
  progress_->step(state.global_step, s.loss, logged_lr, tps, eta);

  const bool last = state.global_step >= plan_.total_steps;
  if (!((plan_.logging_steps > 0 && state.global_step % plan_.logging_steps == 0) || last ||
        (a_.logging_first_step && state.global_step == 1)))
    return;
  nlohmann::json e = {{"loss", logged_loss_sum_ / double(logged_steps_)}, {"grad_norm", s.grad_norm},
                      {"learning_rate", logged_lr}, {"epoch", state.epoch}, {"step", state.global_step},
                      {"tokens_per_second", tps}};
  if (fp16_) e["loss_scale"] = s.loss_scale;
  state.log_history.push_back(e);
  progress_->log(e);
  logged_loss_sum_ = 0, logged_steps_ = 0, tokens_since_ = 0;
  since_log_.reset();
}

bool TrainingRun::evaluation_due(const Window& win) const {
  const int64_t step = r_.state.global_step;
  return L_->eval && ((plan_.eval_steps > 0 && step % plan_.eval_steps == 0) ||
                      (a_.evaluation_strategy == IntervalStrategy::Epoch && win.epoch_end()) || step >= plan_.total_steps);
}

void TrainingRun::evaluate_now() {
  TrainerState& state = r_.state;
  core::Timer et;
  const EvalSums sums = evaluate(*eval_objective_, engine_->model_params(), *L_->eval, a_, L_->pad_id, comm_);
  const double eval_loss = sums.loss(a_.eval_token_weighted_loss);
  nlohmann::json e = {{"eval_loss", eval_loss}, {"eval_perplexity", std::exp(eval_loss)},
                      {"eval_tokens", sums.tokens}, {"epoch", state.epoch}, {"step", state.global_step}};
  // HF's speed_metrics("eval", ...): samples = len(eval_dataset), steps = ceil(samples / (batch x world))
  const int64_t eval_samples = int64_t(L_->eval->size());
  add_speed_metrics(e, "eval", et.seconds(), eval_samples,
                    (eval_samples + a_.per_device_eval_batch_size * world_ - 1) / (a_.per_device_eval_batch_size * world_));
  state.log_history.push_back(e);
  progress_->log(e);
  result_.last_eval_loss = eval_loss;
}

bool TrainingRun::checkpoint_or_stop(const Window& win) {
  const int64_t step = r_.state.global_step;
  const int64_t stop_votes = comm_.all_reduce(int64_t(stop_requested() ? 1 : 0), dist::ScalarOp::Max);
  if ((plan_.save_steps > 0 && step % plan_.save_steps == 0) ||
      (a_.save_strategy == IntervalStrategy::Epoch && win.epoch_end()) || stop_votes > 0)
    save_checkpoint(CheckpointSetting{a_, *layout_, plan_, run_args_, base_lr_}, *engine_, r_, step, stop_votes > 0,
                    *progress_, comm_);
  return stop_votes > 0;
}

TrainResult TrainingRun::stopped(const std::string& why) {
  progress_->message(why);
  result_.interrupted = true;
  result_.global_step = r_.state.global_step;
  return result_;
}

// The end of the run: the adapter is always written to output_dir (FastChat skips it without a launcher).
TrainResult TrainingRun::finish() {
  log_final_loss();
  log_resources();
  save_final();
  comm_.barrier();
  result_.global_step = r_.state.global_step;
  result_.train_loss = r_.run_steps > 0 ? r_.run_loss_sum / double(r_.run_steps) : 0;
  return result_;
}

void TrainingRun::log_final_loss() {
  if (r_.run_steps <= r_.loss_steps_before) return;
  TrainerState& state = r_.state;
  // HF's speed_metrics("train", start, num_train_samples, max_steps): num_train_samples is max_steps x the
  // global batch with --max_steps, else len(train_dataset) x num_train_epochs; both over the whole run's
  // steps even after a resume, as HF counts them
  const double num_train_samples =
      a_.max_steps > 0 ? double(a_.max_steps * a_.per_device_train_batch_size * a_.gradient_accumulation_steps * world_)
                       : double(train_set_->size()) * a_.num_train_epochs;
  const double runtime = run_timer_.seconds();
  nlohmann::json e = {{"train_loss", r_.run_loss_sum / double(r_.run_steps)}, {"total_flos", state.total_flos},
                      {"epoch", state.epoch}, {"step", state.global_step}};
  e["train_runtime"] = round_to(runtime, 4);
  if (runtime > 0) {
    e["train_samples_per_second"] = round_to(num_train_samples / runtime, 3);
    e["train_steps_per_second"] = round_to(double(plan_.total_steps) / runtime, 3);
  }
  state.log_history.push_back(e);
  progress_->log(e);
}

// Peak memory per rank, time per op, and the measured communication beside the ZeRO formula's.
void TrainingRun::log_resources() {
  TrainerState& state = r_.state;
  // every rank's peak resident memory so far (weights, activations, buffers; the mapped file pages
  // are dropped as tensors are read)
  const auto all = comm_.all_gather_bytes(std::to_string(core::peak_rss_bytes()));
  std::string line = "peak RSS per rank:";
  nlohmann::json per_rank = nlohmann::json::array();
  for (size_t r = 0; r < all.size(); ++r) {
    const int64_t bytes = std::stoll(all[r]);
    per_rank.push_back(bytes);
    char b[64];
    std::snprintf(b, sizeof b, " %s%zu %.2f GiB", r ? "| " : "", r, double(bytes) / double(1 << 30));
    line += b;
  }
  state.zerolora["peak_rss_bytes_per_rank"] = per_rank;
  if (L_->zero3) {
    const Zero3Memory m = L_->zero3->memory();
    state.zerolora["zero3_frozen_bytes"] = {{"full_model", m.full_model_bytes}, {"sharded", m.sharded_bytes},
                                            {"persistent", m.persistent_bytes},
                                            {"gather_buffers", m.gather_buffer_bytes}};
  }
  progress_->message(line);
  if (gpu_) {
    const int64_t peak = gpu_->peak_allocated();
    state.zerolora["peak_gpu_bytes"] = peak;
    char b[160];
    std::snprintf(b, sizeof b, "peak GPU memory (rank %d, %s): %.2f GiB", rank_, gpu_->name().c_str(),
                  double(peak) / double(1 << 30));
    progress_->message(b);
  }
  if (core::op_profiling()) progress_->message("time by op (rank " + std::to_string(rank_) + "): " + core::op_profile_summary());
  if (traffic_.steps > 0 && world_ > 1) {
    const dist::ZeroStepShape shape = engine_->traffic_shape(a_.gradient_accumulation_steps, L_->zero3.get());
    state.zerolora["communication"] = report_traffic(traffic_, dist::zero_step_volume(shape), *progress_);
  }
}

void TrainingRun::save_final() {
  if (rank_ != 0) return;
  TrainerState& state = r_.state;
  engine_->download_params();  // with the optimizer on the GPU the current params are there
  save_final_adapter(a_.output_dir, *layout_, engine_->host_params(), a_.model_name_or_path);
  state.stateful_callbacks = trainer_control_callbacks(false, true);  // HF's save_state after train()
  save_trainer_state(state, (fs::path(a_.output_dir) / "trainer_state.json").string());
  redraw_loss_curve(state.log_history, a_.output_dir, *progress_);
  progress_->message("adapter written to " + a_.output_dir + " (adapter_config.json, adapter_model.safetensors)");
}

}  // namespace

// ------------------------------------------------------------------------------------------------

TrainResult run_training(TrainArgs a, dist::Comm& comm) {
  take_stop_signals(true);  // the zerolora binary did this in main(); a library caller gets it here
  TrainingRun run(std::move(a), comm);
  return run.run();
}

double run_evaluation(const TrainArgs& a, const std::string& adapter_dir, dist::Comm& comm) {
  core::set_num_threads(int(a.num_threads));
  Progress log(comm.rank() != 0, 0, "");
  TrainArgs e = a;
  if (e.eval_data_path.empty()) e.eval_data_path = e.data_path;
  dist::check_same_files_on_all_ranks(comm, dist::training_input_files(e.model_name_or_path, {e.eval_data_path}));
  Loaded L = load_everything(e, false, log);
  const model::LoadedAdapter adapter = model::load_adapter_for_model(L.config, adapter_dir);
  std::unique_ptr<kernels::CudaContext> gpu = open_device(a.device, comm.rank(), log);
  const kernels::Context& ctx = gpu ? gpu->ctx() : kernels::host();
  const model::LlamaWeights device_weights = gpu ? model::to_device(L.weights(), ctx) : model::LlamaWeights{};
  kernels::DeviceArray<float> adapter_dev;
  const float* adapter_params = adapter.data();
  if (gpu && adapter.layout) {
    adapter_dev = kernels::DeviceArray<float>(adapter.layout->numel(), ctx);
    kernels::copy_to_device(adapter_dev.data(), adapter.data(), size_t(adapter.layout->numel()) * sizeof(float), ctx);
    adapter_params = adapter_dev.data();
  }
  model::LlamaModel<float> m(gpu ? device_weights : L.weights(), adapter.layout.get(), {}, ctx);
  SupervisedFineTuning sft(m, false);
  const EvalSums sums = evaluate(sft, adapter_params, *L.eval, e, L.pad_id, comm);
  core::check(sums.tokens > 0, e.eval_data_path, "has no trained tokens to evaluate", "check the data and template");
  const double loss = sums.loss(e.eval_token_weighted_loss);
  char buf[256];
  std::snprintf(buf, sizeof buf, "eval_loss %.6f  perplexity %.4f  tokens %lld", loss, std::exp(loss),
                (long long)sums.tokens);
  log.message(buf);
  return loss;
}

}  // namespace zerolora::train
