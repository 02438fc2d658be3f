#include "train/training_checkpoint.h"

#include <filesystem>
#include <fstream>
#include <optional>

#include "core/error.h"
#include "io/checkpoint_dir.h"
#include "io/safetensors.h"
#include "model/adapter_io.h"
#include "train/args.h"
#include "train/lr_schedule.h"

namespace zerolora::train {

namespace fs = std::filesystem;

namespace {

// A JSON file of the model folder, or null when it is absent or unreadable (then it is copied as it is).
nlohmann::json read_json_or_null(const fs::path& path) {
  std::ifstream f(path);
  if (!f) return nullptr;
  try {
    nlohmann::json j = nlohmann::json::parse(f);
    return j.is_object() ? j : nlohmann::json(nullptr);
  } catch (const std::exception&) {
    return nullptr;
  }
}

bool has_token(const nlohmann::json& j, const char* key) {
  return j.is_object() && j.contains(key) && (j[key].is_string() || j[key].is_object());
}


// The learning rate our schedule (scheduler.json's type, base_lr, total_steps, warmup_steps) gives after
// `step` scheduler steps: LambdaLR's get_last_lr() then, the rate of the next update. base_lr when the
// schedule is not described.
double scheduled_lr(const nlohmann::json& scheduler, int64_t step) {
  const double base_lr = scheduler.value("base_lr", 0.0);
  const std::string type = scheduler.value("type", std::string());
  for (LrSchedulerType t : {LrSchedulerType::Constant, LrSchedulerType::ConstantWithWarmup, LrSchedulerType::Linear,
                            LrSchedulerType::Cosine})
    if (to_string(t) == type)
      return LrSchedule(t, base_lr, scheduler.value("total_steps", int64_t(0)), scheduler.value("warmup_steps", int64_t(0)))
          .lr(step);
  return base_lr;
}

// PEFT's trainable parameters as HF Trainer's optimizer numbers them: (offset, shape) of lora_A then lora_B per
// slot (the weight-decay group), then the --lora_bias biases (the no-decay group).
std::vector<std::pair<int64_t, std::vector<int64_t>>> peft_parameters(const model::LoraLayout& layout) {
  return layout.peft_parameter_order();
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string t = "[";
  for (size_t i = 0; i < shape.size(); ++i) t += (i ? ", " : "") + std::to_string(shape[i]);
  return t + "]";
}

}  // namespace

io::PtValue adamw_state_dict(const TrainingSnapshot& s, const model::LoraLayout& layout, double lr, double base_lr) {
  using io::PtValue;
  const auto params = peft_parameters(layout);
  PtValue state = PtValue::dict();
  PtValue indices = PtValue::list(), no_decay = PtValue::list();  // HF's two groups: biases take no weight decay
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& [offset, shape] = params[i];
    const int64_t n = numel_of(shape);
    PtValue st = PtValue::dict();
    // torch >= 1.12 keeps step as a float32 scalar tensor (exact for counts below 2^24)
    st.set(PtValue::string("step"), PtValue::tensor(io::PtTensor::from_f32({float(s.optimizer_steps)}, {})));
    st.set(PtValue::string("exp_avg"),
           PtValue::tensor(io::PtTensor::from_f32({s.exp_avg.begin() + offset, s.exp_avg.begin() + offset + n}, shape)));
    st.set(PtValue::string("exp_avg_sq"), PtValue::tensor(io::PtTensor::from_f32(
                                              {s.exp_avg_sq.begin() + offset, s.exp_avg_sq.begin() + offset + n}, shape)));
    state.set(PtValue::integer(int64_t(i)), std::move(st));
    (i < 2 * layout.slots().size() ? indices : no_decay).push_back(PtValue::integer(int64_t(i)));
  }
  auto group = [&](PtValue params_list, double weight_decay) {
    PtValue g = PtValue::dict();
    g.set(PtValue::string("lr"), PtValue::real(lr));
    g.set(PtValue::string("betas"), PtValue::tuple({PtValue::real(s.adamw.beta1), PtValue::real(s.adamw.beta2)}));
    g.set(PtValue::string("eps"), PtValue::real(s.adamw.eps));
    g.set(PtValue::string("weight_decay"), PtValue::real(weight_decay));
    g.set(PtValue::string("amsgrad"), PtValue::boolean(false));
    g.set(PtValue::string("foreach"), PtValue());
    g.set(PtValue::string("maximize"), PtValue::boolean(false));
    g.set(PtValue::string("capturable"), PtValue::boolean(false));
    g.set(PtValue::string("differentiable"), PtValue::boolean(false));
    g.set(PtValue::string("fused"), PtValue());
    g.set(PtValue::string("initial_lr"), PtValue::real(base_lr));
    g.set(PtValue::string("params"), std::move(params_list));
    return g;
  };
  PtValue sd = PtValue::dict();
  sd.set(PtValue::string("state"), std::move(state));
  sd.set(PtValue::string("param_groups"),
         PtValue::list({group(std::move(indices), s.adamw.weight_decay), group(std::move(no_decay), 0.0)}));
  return sd;
}

void read_adamw_state_dict(const io::PtValue& sd, const model::LoraLayout& layout, const std::string& where,
                           TrainingSnapshot* s) {
  const auto params = peft_parameters(layout);
  const std::string fix = "resume with the LoRA settings (--lora_r, --lora_target_modules, the model) of the run "
                          "that saved it";
  // torch numbers parameters across the groups in order; HF puts decay and no-decay parameters in two groups
  std::vector<int64_t> order;
  bool first_group = true;
  for (const io::PtValue& g : sd.at("param_groups", where).items(where + ":param_groups")) {
    for (const io::PtValue& i : g.at("params", where + ":param_groups").items(where + ":params"))
      order.push_back(i.as_int(where + ":params"));
    if (first_group) {
      first_group = false;
      const auto& betas = g.at("betas", where + ":param_groups").items(where + ":betas");
      core::check(betas.size() == 2, where + ":betas", "does not hold two numbers");
      s->adamw.beta1 = betas[0].as_number(where + ":betas"), s->adamw.beta2 = betas[1].as_number(where + ":betas");
      s->adamw.eps = g.at("eps", where).as_number(where + ":eps");
      s->adamw.weight_decay = g.at("weight_decay", where).as_number(where + ":weight_decay");
      for (const char* flag : {"amsgrad", "maximize"})
        if (const io::PtValue* v = g.find(flag); v && v->kind() == io::PtValue::Kind::Bool)
          core::check(!v->as_bool(where), where, std::string("was saved with AdamW ") + flag + "=True",
                      "zerolora's AdamW has no " + std::string(flag) + "; resume it with HF Trainer");
    }
  }
  core::check(order.size() == params.size(), where,
              "holds optimizer state for " + std::to_string(order.size()) + " parameters; this adapter has " +
                  std::to_string(params.size()) + " (lora_A and lora_B of " + std::to_string(layout.slots().size()) +
                  " projections)",
              fix);
  const io::PtValue& state = sd.at("state", where);
  const int64_t n = layout.numel();
  s->exp_avg.assign(size_t(n), 0.f);
  s->exp_avg_sq.assign(size_t(n), 0.f);
  std::optional<int64_t> steps;
  for (size_t k = 0; k < params.size(); ++k) {
    const auto& [offset, shape] = params[k];
    const io::PtValue* st = state.find(order[k]);
    if (!st) continue;  // a parameter that never had a gradient has no state yet: zero moments
    const std::string at = where + ":state[" + std::to_string(order[k]) + "]";
    const io::PtValue& step = st->at("step", at);
    const int64_t this_step = step.kind() == io::PtValue::Kind::Tensor
                                  ? int64_t(step.as_tensor(at + ":step").to_f32(at + ":step").at(0))
                                  : int64_t(step.as_number(at + ":step"));
    core::check(!steps || *steps == this_step, at + ":step",
                "is " + std::to_string(this_step) + " where the other parameters have " + std::to_string(*steps),
                "resume from a checkpoint whose parameters were all trained together");
    steps = this_step;
    for (const char* key : {"exp_avg", "exp_avg_sq"}) {
      const io::PtTensor& t = st->at(key, at).as_tensor(at + ":" + key);
      core::check(t.shape == shape, at + ":" + key,
                  "has shape " + shape_text(t.shape) + " where parameter " + std::to_string(k) + " (PEFT order) is " +
                      shape_text(shape),
                  fix);
      const std::vector<float> v = t.to_f32(at + ":" + key);
      std::copy(v.begin(), v.end(), (std::string(key) == "exp_avg" ? s->exp_avg : s->exp_avg_sq).begin() + offset);
    }
  }
  s->optimizer_steps = steps.value_or(0);
}

io::PtValue lambda_lr_state_dict(int64_t last_epoch, double base_lr, double last_lr) {
  using io::PtValue;
  PtValue sd = PtValue::dict();
  sd.set(PtValue::string("base_lrs"), PtValue::list({PtValue::real(base_lr), PtValue::real(base_lr)}));
  sd.set(PtValue::string("last_epoch"), PtValue::integer(last_epoch));
  sd.set(PtValue::string("verbose"), PtValue::boolean(false));
  sd.set(PtValue::string("_step_count"), PtValue::integer(last_epoch + 1));
  sd.set(PtValue::string("_get_lr_called_within_step"), PtValue::boolean(false));
  sd.set(PtValue::string("_last_lr"), PtValue::list({PtValue::real(last_lr), PtValue::real(last_lr)}));
  sd.set(PtValue::string("lr_lambdas"), PtValue::list({PtValue::dict(), PtValue::dict()}));  // functools.partial's __dict__
  return sd;
}

namespace {
}  // namespace

void copy_tokenizer_files(const std::string& model_dir, const std::string& dir) {
  for (const char* name : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path src = fs::path(model_dir) / name;
    if (fs::exists(src)) fs::copy_file(src, fs::path(dir) / name, fs::copy_options::overwrite_existing);
  }
  // FastChat sets tokenizer.pad_token = tokenizer.unk_token, and HF Trainer saves that tokenizer into every
  // checkpoint (tokenizer.save_pretrained): its tokenizer_config.json and special_tokens_map.json carry
  // pad_token = the unk token. Without an unk token (Llama 3) pad stays unset, as there. HF writes both
  // files with indent 2 and sorted keys.
  nlohmann::json config = read_json_or_null(fs::path(model_dir) / "tokenizer_config.json");
  nlohmann::json map = read_json_or_null(fs::path(model_dir) / "special_tokens_map.json");
  const bool map_absent = !fs::exists(fs::path(model_dir) / "special_tokens_map.json");
  nlohmann::json unk = has_token(map, "unk_token") ? map["unk_token"] : has_token(config, "unk_token") ? config["unk_token"]
                                                                                                    : nlohmann::json();
  if (unk.is_null()) return;
  if (config.is_object()) {
    config["pad_token"] = has_token(config, "unk_token") ? config["unk_token"] : unk;
    io::write_file_synced((fs::path(dir) / "tokenizer_config.json").string(), config.dump(2) + "\n");
  }
  if (map.is_object() || map_absent) {
    if (!map.is_object()) {  // save_pretrained always writes it: the special tokens of the config
      map = nlohmann::json::object();
      for (const char* key : {"bos_token", "eos_token", "unk_token"})
        if (has_token(config, key)) map[key] = config[key];
    }
    map["pad_token"] = has_token(map, "unk_token") ? map["unk_token"] : unk;
    io::write_file_synced((fs::path(dir) / "special_tokens_map.json").string(), map.dump(2) + "\n");
  }
}

void save_training_checkpoint(const std::string& dir, const TrainingSnapshot& s, const model::LoraLayout& layout,
                              const std::string& model_dir) {
  const int64_t n = layout.numel();
  core::check(int64_t(s.params.size()) == n && int64_t(s.exp_avg.size()) == n && int64_t(s.exp_avg_sq.size()) == n,
              dir, "internal: snapshot sizes do not match the adapter layout");
  io::AtomicDir out = io::AtomicDir::begin(dir);
  model::save_peft_adapter(out.temp_path(), layout, s.params.data(), model_dir);
  auto wrap = [&](const std::vector<float>& v) {
    return core::Tensor::borrow(core::DType::F32, {n}, const_cast<float*>(v.data()), {});
  };
  std::vector<std::pair<std::string, core::Tensor>> state = {{"exp_avg", wrap(s.exp_avg)}, {"exp_avg_sq", wrap(s.exp_avg_sq)}};
  // --lora_bias lora_only: the trained biases are not in the adapter (PEFT saves none); kept here for an exact resume
  for (const auto& b : layout.bias_slots())
    if (!b.saved) {
      state.push_back({"params", wrap(s.params)});
      break;
    }
  io::write_safetensors(out.file("optimizer.safetensors"), state,
                        {{"optimizer", "AdamW"}, {"step", std::to_string(s.optimizer_steps)}});
  io::write_file_synced(out.file("scheduler.json"), s.scheduler.dump(2) + "\n");
  // the same optimizer and schedule state as HF Trainer saves it (optimizer.pt, scheduler.pt)
  const double base_lr = s.scheduler.value("base_lr", 0.0);
  const int64_t last_epoch = s.scheduler.value("last_step", s.state.global_step) - s.scheduler.value("skipped_steps", int64_t(0));
  const double lr = scheduled_lr(s.scheduler, last_epoch);
  io::save_torch_file(out.file("optimizer.pt"), adamw_state_dict(s, layout, lr, base_lr));
  io::save_torch_file(out.file("scheduler.pt"), lambda_lr_state_dict(last_epoch, base_lr, lr));
  io::write_file_synced(out.file("training_args.json"), s.args.dump(2) + "\n");
  save_trainer_state(s.state, out.file("trainer_state.json"));
  copy_tokenizer_files(model_dir, out.temp_path());
  out.commit();
}

static nlohmann::json read_json(const fs::path& path) {
  std::ifstream f(path);
  core::check(bool(f), path.string(), "missing from the checkpoint",
              "the checkpoint is incomplete; resume from an earlier checkpoint-N or delete this one");
  try {
    return nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw core::Error(path.string(), std::string("is not valid JSON: ") + e.what(),
                      "the checkpoint is damaged; resume from an earlier checkpoint-N");
  }
}

TrainingSnapshot load_training_checkpoint(const std::string& dir, const model::LoraLayout& layout) {
  TrainingSnapshot s;
  const int64_t n = layout.numel();
  s.params.assign(size_t(n), 0.f);
  model::init_bias_params(layout, s.params.data());  // lora_only biases: the base's unless saved below (as HF)
  model::load_peft_adapter(dir, layout, s.params.data());
  const std::string opt_path = (fs::path(dir) / "optimizer.safetensors").string();
  const std::string opt_pt = (fs::path(dir) / "optimizer.pt").string();
  s.state = load_trainer_state((fs::path(dir) / "trainer_state.json").string());
  if (fs::exists(opt_path)) {  // ours (optimizer.pt beside it holds the same moments)
    io::TensorStore store = io::TensorStore::open_file(opt_path);
    core::Tensor m = store.load("exp_avg", core::DType::F32, {n});
    core::Tensor v = store.load("exp_avg_sq", core::DType::F32, {n});
    s.exp_avg.assign(m.data<float>(), m.data<float>() + n);
    s.exp_avg_sq.assign(v.data<float>(), v.data<float>() + n);
    if (store.has("params")) {  // the trained lora_only biases
      core::Tensor p = store.load("params", core::DType::F32, {n});
      for (const auto& b : layout.bias_slots())
        if (!b.saved) std::copy(p.data<float>() + b.offset, p.data<float>() + b.offset + b.n, s.params.data() + b.offset);
    }
    auto meta = io::SafetensorsFile::open(opt_path)->metadata();
    core::check(meta.count("step") > 0, opt_path, "has no optimizer step in its metadata");
    s.optimizer_steps = std::stoll(meta.at("step"));
    s.scheduler = read_json(fs::path(dir) / "scheduler.json");
    s.args = read_json(fs::path(dir) / "training_args.json");
    return s;
  }
  // An HF Trainer checkpoint: optimizer.pt + scheduler.pt (torch state_dicts)
  if (!fs::exists(opt_pt)) {
    bool deepspeed = false;
    for (const auto& e : fs::directory_iterator(dir)) deepspeed |= e.path().filename().string().rfind("global_step", 0) == 0;
    core::check(!deepspeed, dir,
                "is an HF Trainer checkpoint saved under DeepSpeed: its optimizer state is in DeepSpeed's global_step*/ "
                "files, which are not read",
                "resume it with DeepSpeed, or start from its adapter with --lora_weight_path " + dir);
    throw core::Error(opt_path, "missing from the checkpoint (and no HF optimizer.pt either)",
                      "the checkpoint is incomplete; resume from an earlier checkpoint-N or delete this one");
  }
  s.from_hf_trainer = true;
  read_adamw_state_dict(io::load_torch_file(opt_pt), layout, opt_pt, &s);
  const std::string sch_pt = (fs::path(dir) / "scheduler.pt").string();
  core::check(fs::exists(sch_pt), sch_pt, "missing from the HF checkpoint (optimizer.pt is there)",
              "the checkpoint is incomplete; resume from an earlier checkpoint-N");
  const io::PtValue sch = io::load_torch_file(sch_pt);
  const int64_t last_epoch = sch.at("last_epoch", sch_pt).as_int(sch_pt + ":last_epoch");
  const auto& base_lrs = sch.at("base_lrs", sch_pt).items(sch_pt + ":base_lrs");
  const auto& last_lr = sch.at("_last_lr", sch_pt).items(sch_pt + ":_last_lr");
  core::check(!base_lrs.empty() && !last_lr.empty(), sch_pt, "has no learning rates",
              "the file was not written by an LR scheduler's state_dict()");
  core::check(last_epoch <= s.state.global_step, sch_pt,
              "is at step " + std::to_string(last_epoch) + ", past trainer_state.json's global_step " +
                  std::to_string(s.state.global_step),
              "the checkpoint's files do not belong together; resume from another checkpoint-N");
  // HF steps the scheduler only after an update that ran: the difference is fp16's skipped steps
  s.scheduler = {{"source", "hf_trainer"}, {"base_lr", base_lrs[0].as_number(sch_pt + ":base_lrs")},
                 {"last_step", s.state.global_step}, {"last_lr", last_lr[0].as_number(sch_pt + ":_last_lr")},
                 {"skipped_steps", s.state.global_step - last_epoch}};
  return s;
}

}  // namespace zerolora::train
