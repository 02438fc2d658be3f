#include "train/deepspeed_config.h"

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace zerolora::train {

using core::Error;
using nlohmann::json;

namespace {

const std::string kAutoFix = "write a value; HF fills \"auto\" only in the batch keys, gradient_clipping, "
                             "fp16/bf16.enabled, optimizer.params and three zero_optimization bucket keys";

std::string show(double x) {
  std::ostringstream s;
  s << x;
  return s.str();
}

// One JSON object of the config. Every key read is remembered, so what is left over can be reported.
class Section {
 public:
  Section(const json& object, std::string prefix, const std::string& path)
      : object_(object), prefix_(std::move(prefix)), path_(path) {}

  bool has(const std::string& key) const { return object_.contains(key); }

  int64_t integer(const std::string& key, int64_t fallback) {
    const json* v = take(key);
    return v ? to_integer(key, *v) : fallback;
  }
  double number(const std::string& key, double fallback) {
    const json* v = take(key);
    return v ? to_number(key, *v) : fallback;
  }
  bool boolean(const std::string& key, bool fallback) {
    const json* v = take(key);
    return v ? to_bool(key, *v) : fallback;
  }
  std::string text(const std::string& key, const std::string& fallback) {
    const json* v = take(key);
    if (!v) return fallback;
    if (!v->is_string()) fail(key, "expected a string, got " + v->dump());
    return v->get<std::string>();
  }
  AutoOr<int64_t> auto_integer(const std::string& key) {
    return auto_or<int64_t>(key, [&](const json& v) { return to_integer(key, v); });
  }
  AutoOr<double> auto_number(const std::string& key) {
    return auto_or<double>(key, [&](const json& v) { return to_number(key, v); });
  }
  AutoOr<bool> auto_boolean(const std::string& key) {
    return auto_or<bool>(key, [&](const json& v) { return to_bool(key, v); });
  }
  // The raw value (marked as read), or nullptr when absent.
  const json* value(const std::string& key) { return take(key); }
  // A nested object, or nullptr when absent.
  const json* object(const std::string& key) {
    const json* v = take(key);
    if (v && !v->is_object()) fail(key, "expected an object {...}, got " + v->dump());
    return v;
  }
  // Keys that are valid DeepSpeed settings but change nothing here.
  void ignore(std::initializer_list<const char*> keys, std::vector<std::string>& ignored) {
    for (const char* key : keys)
      if (take(key)) ignored.push_back(prefix_ + key);
  }
  void collect_unknown(std::vector<std::string>& unknown) const {
    for (auto it = object_.begin(); it != object_.end(); ++it)
      if (!seen_.count(it.key())) unknown.push_back(prefix_ + it.key());
  }
  std::string where(const std::string& key) const { return path_ + ":" + prefix_ + key; }
  [[noreturn]] void fail(const std::string& key, const std::string& what,
                         const std::string& fix = "see DeepSpeed's config-json documentation") const {
    throw Error(where(key), what, fix);
  }

 private:
  const json* take(const std::string& key) {
    seen_.insert(key);
    auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }
  template <class T, class Convert>
  AutoOr<T> auto_or(const std::string& key, Convert convert) {
    AutoOr<T> out;
    const json* v = take(key);
    if (!v) return out;
    if (v->is_string() && v->get<std::string>() == "auto") {
      out.kind = AutoOr<T>::Kind::Auto;
      return out;
    }
    out.kind = AutoOr<T>::Kind::Value;
    out.value = convert(*v);
    return out;
  }
  void refuse_auto(const std::string& key, const json& v) const {
    if (v.is_string() && v.get<std::string>() == "auto")
      fail(key, "\"auto\" is not allowed here (DeepSpeed itself never accepts it)", kAutoFix);
  }
  int64_t to_integer(const std::string& key, const json& v) const {
    refuse_auto(key, v);
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {  // 5e8 and 1e12 are JSON floats
      double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) return static_cast<int64_t>(d);
    }
    fail(key, "expected an integer, got " + v.dump());
  }
  double to_number(const std::string& key, const json& v) const {
    refuse_auto(key, v);
    if (!v.is_number()) fail(key, "expected a number, got " + v.dump());
    return v.get<double>();
  }
  bool to_bool(const std::string& key, const json& v) const {
    refuse_auto(key, v);
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_number_integer() && (v.get<int64_t>() == 0 || v.get<int64_t>() == 1)) return v.get<int64_t>() == 1;
    fail(key, "expected true or false, got " + v.dump());
  }

  const json& object_;
  std::string prefix_;
  const std::string& path_;
  std::set<std::string> seen_;
};

void require(bool ok, const Section& s, const std::string& key, const std::string& what) {
  if (!ok) s.fail(key, what);
}

OffloadConfig parse_offload(Section& zero, const std::string& key, DeepSpeedConfig& cfg) {
  OffloadConfig out;
  const json* v = zero.object(key);
  if (!v) return out;
  Section s(*v, "zero_optimization." + key + ".", cfg.path);
  out.device = s.text("device", "none");
  out.pin_memory = s.boolean("pin_memory", false);
  if (out.device == "nvme")
    s.fail("device", "nvme offload is not supported", "use \"device\": \"cpu\" (or \"none\")");
  if (out.device != "none" && out.device != "cpu")
    s.fail("device", "'" + out.device + "' is not an offload device", "use \"cpu\" or \"none\"");
  s.ignore({"nvme_path", "buffer_count", "buffer_size", "max_in_cpu", "pipeline_read", "pipeline_write",
            "fast_init", "ratio", "pipeline"},
           cfg.ignored_keys);
  s.collect_unknown(cfg.unknown_keys);
  return out;
}

void parse_fp16(Section& top, DeepSpeedConfig& cfg) {
  const json* v = top.object("fp16");
  if (!v) return;
  cfg.has_fp16_section = true;
  Section s(*v, "fp16.", cfg.path);
  cfg.fp16_enabled = s.auto_boolean("enabled");
  LossScaleConfig& ls = cfg.loss_scale;
  // The gotcha (spec §1.3): DeepSpeed passes the dynamic-scaling settings on only if one of them is present.
  bool any_dynamic_key = false;
  for (const char* key : {"initial_scale_power", "loss_scale_window", "min_loss_scale", "hysteresis",
                          "consecutive_hysteresis"})
    any_dynamic_key = any_dynamic_key || s.has(key);
  ls.static_scale = s.number("loss_scale", 0);
  ls.initial_scale_power = s.integer("initial_scale_power", 16);
  ls.scale_window = s.integer("loss_scale_window", 1000);
  ls.hysteresis = s.integer("hysteresis", 2);
  ls.consecutive_hysteresis = s.boolean("consecutive_hysteresis", false);
  ls.min_scale = s.number("min_loss_scale", 1);
  if (!any_dynamic_key) {
    ls.initial_scale_power = 32;
    ls.hysteresis = 1;
    ls.constructor_defaults = true;
  }
  require(ls.static_scale >= 0, s, "loss_scale", "must be >= 0 (0 = dynamic)");
  require(ls.initial_scale_power >= 0 && ls.initial_scale_power <= 64, s, "initial_scale_power", "must be in [0, 64]");
  require(ls.scale_window >= 1, s, "loss_scale_window", "must be >= 1");
  require(ls.hysteresis >= 1, s, "hysteresis", "must be >= 1");
  require(ls.min_scale > 0, s, "min_loss_scale", "must be > 0");
  s.ignore({"auto_cast", "fp16_master_weights_and_grads"}, cfg.ignored_keys);
  s.collect_unknown(cfg.unknown_keys);
}

void parse_bf16(Section& top, DeepSpeedConfig& cfg) {
  const char* key = top.has("bf16") ? "bf16" : "bfloat16";  // DeepSpeed accepts both names
  const json* v = top.object(key);
  if (!v) return;
  cfg.has_bf16_section = true;
  Section s(*v, std::string(key) + ".", cfg.path);
  cfg.bf16_enabled = s.auto_boolean("enabled");
  s.ignore({"immediate_grad_update"}, cfg.ignored_keys);
  s.collect_unknown(cfg.unknown_keys);
}

void parse_zero(Section& top, DeepSpeedConfig& cfg) {
  const json* v = top.object("zero_optimization");
  if (!v) return;
  Section s(*v, "zero_optimization.", cfg.path);
  ZeroConfig& z = cfg.zero;
  z.stage = s.integer("stage", 0);
  if (z.stage < 0 || z.stage > 3) s.fail("stage", "ZeRO stage " + std::to_string(z.stage) + " does not exist",
                                         "use 0, 1, 2 or 3");
  z.overlap_comm = s.boolean("overlap_comm", z.stage == 3);
  z.contiguous_gradients = s.boolean("contiguous_gradients", true);
  z.reduce_scatter = s.boolean("reduce_scatter", true);
  cfg.zero_reduce_bucket_size = s.auto_integer("reduce_bucket_size");
  z.allgather_bucket_size = s.integer("allgather_bucket_size", z.allgather_bucket_size);
  cfg.zero_stage3_prefetch_bucket_size = s.auto_integer("stage3_prefetch_bucket_size");
  cfg.zero_stage3_param_persistence_threshold = s.auto_integer("stage3_param_persistence_threshold");
  z.stage3_max_live_parameters = s.integer("stage3_max_live_parameters", z.stage3_max_live_parameters);
  z.stage3_max_reuse_distance = s.integer("stage3_max_reuse_distance", z.stage3_max_reuse_distance);
  z.stage3_model_persistence_threshold =
      s.integer("stage3_model_persistence_threshold", z.stage3_model_persistence_threshold);
  z.stage3_gather_16bit_weights_on_model_save =
      s.boolean("stage3_gather_16bit_weights_on_model_save",
                s.boolean("stage3_gather_fp16_weights_on_model_save", false));  // old name
  z.sub_group_size = s.integer("sub_group_size", z.sub_group_size);
  z.offload_optimizer = parse_offload(s, "offload_optimizer", cfg);
  z.offload_param = parse_offload(s, "offload_param", cfg);
  // deprecated spellings of the offload sections
  bool pin = s.boolean("cpu_offload_use_pin_memory", false);
  if (s.boolean("cpu_offload", false)) z.offload_optimizer = {"cpu", pin};
  if (s.boolean("cpu_offload_param", false)) z.offload_param = {"cpu", pin};

  for (auto [key, value] : {std::pair{"allgather_bucket_size", z.allgather_bucket_size},
                            std::pair{"sub_group_size", z.sub_group_size},
                            std::pair{"stage3_max_live_parameters", z.stage3_max_live_parameters}})
    require(value > 0, s, key, "must be > 0");
  require(z.stage3_max_reuse_distance >= 0, s, "stage3_max_reuse_distance", "must be >= 0");
  for (const auto* knob : {&cfg.zero_reduce_bucket_size, &cfg.zero_stage3_prefetch_bucket_size,
                           &cfg.zero_stage3_param_persistence_threshold})
    if (knob->has_value() && knob->value < 0) s.fail("bucket sizes", "must be >= 0");
  if (z.offload_param.device != "none" && z.stage != 3)
    s.fail("offload_param", "parameter offload exists only in ZeRO stage 3 (stage is " + std::to_string(z.stage) + ")",
           "remove offload_param or use \"stage\": 3");
  if (z.offload_optimizer.device != "none" && z.stage == 0)
    s.fail("offload_optimizer", "optimizer offload needs ZeRO stage 1, 2 or 3", "set \"stage\" or remove it");
  s.ignore({"allgather_partitions", "use_multi_rank_bucket_allreduce", "round_robin_gradients",
            "load_from_fp32_weights", "stage3_module_granularity_threshold",
            "stage3_use_all_reduce_for_fetch_params", "ignore_unused_parameters", "zero_hpz_partition_size",
            "zero_quantized_weights", "zero_quantized_gradients", "zero_quantized_nontrainable_weights",
            "elastic_checkpoint", "legacy_stage1", "mics_shard_size", "mics_hierarchical_params_gather",
            "memory_efficient_linear", "pipeline_loading_checkpoint", "override_module_apply"},
           cfg.ignored_keys);
  s.collect_unknown(cfg.unknown_keys);
}

void parse_optimizer(Section& top, DeepSpeedConfig& cfg) {
  const json* v = top.object("optimizer");
  if (!v) return;
  cfg.has_optimizer_section = true;
  Section s(*v, "optimizer.", cfg.path);
  cfg.optimizer_type = s.text("type", "");
  std::string type;
  for (char c : cfg.optimizer_type) type += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (type != "adamw" && type != "adam")
    s.fail("type", "optimizer '" + cfg.optimizer_type + "' is not supported; zerolora implements AdamW",
           "use \"type\": \"AdamW\", or remove the optimizer section (HF then builds AdamW from the flags, "
           "as with FastChat's configs)");
  const json* params = s.object("params");
  s.collect_unknown(cfg.unknown_keys);
  if (!params) return;
  Section p(*params, "optimizer.params.", cfg.path);
  cfg.optimizer_lr = p.auto_number("lr");
  cfg.optimizer_eps = p.auto_number("eps");
  cfg.optimizer_weight_decay = p.auto_number("weight_decay");
  if (const json* betas = p.value("betas")) {
    if (betas->is_string() && betas->get<std::string>() == "auto") {
      cfg.optimizer_betas.kind = AutoOr<std::array<double, 2>>::Kind::Auto;
    } else if (betas->is_array() && betas->size() == 2 && (*betas)[0].is_number() && (*betas)[1].is_number()) {
      cfg.optimizer_betas.kind = AutoOr<std::array<double, 2>>::Kind::Value;
      cfg.optimizer_betas.value = {(*betas)[0].get<double>(), (*betas)[1].get<double>()};
    } else {
      p.fail("betas", "expected [beta1, beta2] or \"auto\", got " + betas->dump());
    }
  }
  if (type == "adam" && !p.boolean("adam_w_mode", true))
    p.fail("adam_w_mode", "false selects Adam with L2 regularisation, which zerolora does not implement",
           "remove it (DeepSpeed's default is true, i.e. AdamW) or use \"type\": \"AdamW\"");
  if (!p.boolean("bias_correction", true)) p.fail("bias_correction", "false is not supported", "remove it");
  if (p.boolean("amsgrad", false)) p.fail("amsgrad", "AMSGrad is not supported", "remove it");
  if (p.has("max_grad_norm"))
    p.fail("max_grad_norm", "DeepSpeed rejects max_grad_norm in optimizer params",
           "use the top-level \"gradient_clipping\" key");
  p.ignore({"torch_adam", "fused", "foreach"}, cfg.ignored_keys);
  std::vector<std::string> unknown;
  p.collect_unknown(unknown);
  if (!unknown.empty())
    throw Error(cfg.path + ":" + unknown.front(), "is not an AdamW parameter (the optimizer would reject it)",
                "remove it; AdamW takes lr, betas, eps, weight_decay");
}

}  // namespace

DeepSpeedConfig parse_deepspeed_config(const std::string& json_text, const std::string& path) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {  // parse errors and numbers out of range
    throw Error(path, std::string("is not valid JSON: ") + e.what(), "fix the syntax (a trailing comma?)");
  }
  if (!root.is_object()) throw Error(path, "expected a JSON object {...} at the top", "check the --deepspeed file");
  DeepSpeedConfig cfg;
  cfg.path = path;
  Section top(root, "", cfg.path);
  cfg.train_batch_size = top.auto_integer("train_batch_size");
  cfg.train_micro_batch_size_per_gpu = top.auto_integer("train_micro_batch_size_per_gpu");
  cfg.gradient_accumulation_steps = top.auto_integer("gradient_accumulation_steps");
  for (const auto* knob : {&cfg.train_batch_size, &cfg.train_micro_batch_size_per_gpu, &cfg.gradient_accumulation_steps})
    if (knob->has_value() && knob->value < 1) top.fail("batch keys", "train_batch_size, train_micro_batch_size_per_gpu "
                                                       "and gradient_accumulation_steps must be >= 1");
  cfg.gradient_clipping = top.auto_number("gradient_clipping");
  if (cfg.gradient_clipping.has_value() && cfg.gradient_clipping.value < 0)
    top.fail("gradient_clipping", "must be >= 0 (0 = off)");
  cfg.steps_per_print = top.integer("steps_per_print", 0);
  parse_fp16(top, cfg);
  parse_bf16(top, cfg);
  if (cfg.fp16_enabled.has_value() && cfg.fp16_enabled.value && cfg.bf16_enabled.has_value() && cfg.bf16_enabled.value)
    top.fail("fp16/bf16", "fp16.enabled and bf16.enabled are both true", "enable one of them (or use \"auto\")");
  parse_zero(top, cfg);
  parse_optimizer(top, cfg);
  if (const json* scheduler = top.object("scheduler")) {
    std::string type = scheduler->value("type", std::string("?"));
    top.fail("scheduler", "the DeepSpeed scheduler '" + type + "' is not supported yet",
             "remove the scheduler section and use --lr_scheduler_type, --warmup_ratio / --warmup_steps (HF's "
             "schedule, which FastChat's configs use)");
  }
  if (const json* amp = top.object("amp")) {
    Section s(*amp, "amp.", cfg.path);
    AutoOr<bool> enabled = s.auto_boolean("enabled");
    if (enabled.has_value() && enabled.value) s.fail("enabled", "apex amp is not supported", "use --fp16 or --bf16");
    cfg.ignored_keys.push_back("amp");
  }
  top.ignore({"wall_clock_breakdown", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
              "communication_data_type", "prescale_gradients", "gradient_predivide_factor", "data_types",
              "checkpoint", "activation_checkpointing", "dataloader_drop_last", "dump_state", "memory_breakdown",
              "flops_profiler", "tensorboard", "wandb", "csv_monitor", "comms_logger", "aio", "sparse_gradients",
              "seq_parallel_communication_data_type", "compile", "timers", "elasticity"},
             cfg.ignored_keys);
  top.collect_unknown(cfg.unknown_keys);
  return cfg;
}

DeepSpeedConfig load_deepspeed_config(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error("--deepspeed " + path, "cannot open the file", "check the path");
  std::stringstream text;
  text << file.rdbuf();
  return parse_deepspeed_config(text.str(), path);
}

// ---------------------------------------------------------------------------------------------
// Resolution ("auto" as HF, then DeepSpeed's batch rule)

namespace {

// Collects HF's "mismatch" list: concrete JSON values that differ from the flags.
struct Mismatches {
  std::vector<std::string> lines;
  template <class T>
  T fill(const AutoOr<T>& knob, const T& from_flags, const std::string& key, const std::string& flag_text,
         const T& when_absent) {
    if (knob.is_auto()) return from_flags;
    if (knob.absent()) return when_absent;
    if (!(knob.value == from_flags)) lines.push_back(key + "=" + render(knob.value) + " vs " + flag_text);
    return knob.value;
  }
  static std::string render(double x) { return show(x); }
  static std::string render(int64_t x) { return std::to_string(x); }
  static std::string render(bool x) { return x ? "true" : "false"; }
  static std::string render(const std::array<double, 2>& x) { return "[" + show(x[0]) + ", " + show(x[1]) + "]"; }
};

std::string flag_text(const std::string& flag, const std::string& value) { return "--" + flag + " " + value; }

// DeepSpeed's inference of absent batch keys (spec §1.1), then its assertion, against the flags' values.
void resolve_batch(const DeepSpeedConfig& cfg, const TrainArgs& args, int64_t world, ResolvedDeepSpeedConfig& out,
                   Mismatches& mismatches) {
  const int64_t mb_flag = args.per_device_train_batch_size, ga_flag = args.gradient_accumulation_steps;
  auto given = [](const AutoOr<int64_t>& k) { return !k.absent(); };
  int64_t mb = mismatches.fill(cfg.train_micro_batch_size_per_gpu, mb_flag, "train_micro_batch_size_per_gpu",
                               flag_text("per_device_train_batch_size", std::to_string(mb_flag)), int64_t{0});
  int64_t ga = mismatches.fill(cfg.gradient_accumulation_steps, ga_flag, "gradient_accumulation_steps",
                               flag_text("gradient_accumulation_steps", std::to_string(ga_flag)), int64_t{0});
  int64_t tbs = cfg.train_batch_size.is_auto() ? world * mb_flag * ga_flag : cfg.train_batch_size.value;
  const bool has_tbs = given(cfg.train_batch_size), has_mb = given(cfg.train_micro_batch_size_per_gpu),
             has_ga = given(cfg.gradient_accumulation_steps);
  if (!has_tbs && !has_mb)
    throw Error(cfg.path, "Either train_batch_size or train_micro_batch_size_per_gpu needs to be provided (DeepSpeed)",
                "add \"train_micro_batch_size_per_gpu\": \"auto\" and \"gradient_accumulation_steps\": \"auto\"");
  if (has_tbs && has_mb && !has_ga) ga = tbs / mb / world;
  else if (has_tbs && !has_mb && has_ga) mb = tbs / world / ga;
  else if (!has_tbs && has_mb && has_ga) tbs = mb * ga * world;
  else if (has_tbs && !has_mb && !has_ga) ga = 1, mb = tbs / world;
  else if (!has_tbs && has_mb && !has_ga) ga = 1, tbs = mb * world;

  if (tbs != mb * ga * world || mb < 1 || ga < 1) {
    std::string fix = "set \"train_batch_size\": \"auto\"";
    if (mb * ga > 0 && tbs % (mb * ga) == 0) fix += ", or run with mpirun -np " + std::to_string(tbs / (mb * ga));
    if (has_ga && mb > 0 && tbs % (mb * world) == 0)
      fix += ", or pass --gradient_accumulation_steps " + std::to_string(tbs / (mb * world));
    mismatches.lines.push_back("train_batch_size=" + std::to_string(tbs) +
                               " is not train_micro_batch_size_per_gpu " + std::to_string(mb) +
                               " x gradient_accumulation_steps " + std::to_string(ga) + " x world size " +
                               std::to_string(world) + " = " + std::to_string(mb * ga * world) + " (" + fix + ")");
  } else {
    // values DeepSpeed derived for absent keys must still be what the data loader uses
    if (!has_mb && mb != mb_flag)
      mismatches.lines.push_back("train_micro_batch_size_per_gpu (derived by DeepSpeed)=" + std::to_string(mb) +
                                 " vs " + flag_text("per_device_train_batch_size", std::to_string(mb_flag)));
    if (!has_ga && ga != ga_flag)
      mismatches.lines.push_back("gradient_accumulation_steps (derived by DeepSpeed)=" + std::to_string(ga) +
                                 " vs " + flag_text("gradient_accumulation_steps", std::to_string(ga_flag)));
  }
  out.train_batch_size = tbs;
  out.micro_batch_per_rank = mb;
  out.gradient_accumulation_steps = ga;
}

void resolve_precision(const DeepSpeedConfig& cfg, const TrainArgs& args, ResolvedDeepSpeedConfig& out,
                       Mismatches& mismatches) {
  out.loss_scale = cfg.loss_scale;
  if (cfg.has_fp16_section) {
    // a section without "enabled" is off for DeepSpeed, and HF does not add the key: refuse the silent fp32 run
    out.fp16 = mismatches.fill(cfg.fp16_enabled, args.fp16, "fp16.enabled", flag_text("fp16", args.fp16 ? "True" : "False"),
                               false);
    if (cfg.fp16_enabled.absent() && args.fp16)
      mismatches.lines.push_back("fp16.enabled absent (= false) vs --fp16 True");
  } else if (args.fp16) {
    // accelerate adds {"fp16": {"enabled": true, "auto_cast": true}}: no scaling keys, so the gotcha applies
    out.fp16 = true;
    out.loss_scale = LossScaleConfig{};
    out.loss_scale.initial_scale_power = 32;
    out.loss_scale.hysteresis = 1;
    out.loss_scale.constructor_defaults = true;
  }
  if (cfg.has_bf16_section) {
    out.bf16 = mismatches.fill(cfg.bf16_enabled, args.bf16, "bf16.enabled", flag_text("bf16", args.bf16 ? "True" : "False"),
                               false);
    if (cfg.bf16_enabled.absent() && args.bf16)
      mismatches.lines.push_back("bf16.enabled absent (= false) vs --bf16 True");
  } else if (args.bf16) {
    out.bf16 = true;
    out.notes.push_back(cfg.path + " has no bf16 section; --bf16 turns bf16 on (what newer accelerate does by "
                        "adding {\"bf16\": {\"enabled\": true}}; older stacks stayed in fp32 here)");
  }
  if (out.fp16 && out.loss_scale.constructor_defaults && out.loss_scale.static_scale == 0)
    out.notes.push_back(cfg.path + ": fp16 without loss-scale keys uses DeepSpeed's scaler defaults: initial scale "
                        "2^32, hysteresis 1, window 1000, min 1 (add \"initial_scale_power\": 16, \"hysteresis\": 2 "
                        "for HF's template values)");
}

void resolve_optimizer(const DeepSpeedConfig& cfg, const TrainArgs& args, ResolvedDeepSpeedConfig& out,
                       Mismatches& mismatches) {
  out.optimizer_from_config = cfg.has_optimizer_section;
  AdamWConfig& a = out.adamw;
  if (!cfg.has_optimizer_section) {
    out.learning_rate = args.learning_rate;
    a.beta1 = args.adam_beta1;
    a.beta2 = args.adam_beta2;
    a.eps = args.adam_epsilon;
    a.weight_decay = args.weight_decay;
    return;
  }
  // Absent params keep the DeepSpeed optimizer's own defaults (lr 1e-3!), which HF does not replace.
  const double ds_default_lr = 1e-3;
  const AdamWConfig ds_defaults{};  // betas (0.9, 0.999), eps 1e-8, weight decay 0: FusedAdam's and CPUAdam's
  out.learning_rate = mismatches.fill(cfg.optimizer_lr, args.learning_rate, "optimizer.params.lr",
                                      flag_text("learning_rate", show(args.learning_rate)), ds_default_lr);
  std::array<double, 2> betas = mismatches.fill(
      cfg.optimizer_betas, std::array<double, 2>{args.adam_beta1, args.adam_beta2}, "optimizer.params.betas",
      "--adam_beta1 " + show(args.adam_beta1) + " --adam_beta2 " + show(args.adam_beta2),
      {ds_defaults.beta1, ds_defaults.beta2});
  a.beta1 = betas[0];
  a.beta2 = betas[1];
  a.eps = mismatches.fill(cfg.optimizer_eps, args.adam_epsilon, "optimizer.params.eps",
                          flag_text("adam_epsilon", show(args.adam_epsilon)), ds_defaults.eps);
  a.weight_decay = mismatches.fill(cfg.optimizer_weight_decay, args.weight_decay, "optimizer.params.weight_decay",
                                   flag_text("weight_decay", show(args.weight_decay)), ds_defaults.weight_decay);
  if (cfg.optimizer_lr.absent() && args.learning_rate != ds_default_lr)
    out.notes.push_back(cfg.path + ": optimizer.params has no lr, so DeepSpeed's default 0.001 is the peak learning "
                        "rate, not --learning_rate " + show(args.learning_rate) + " (write \"lr\": \"auto\")");
}

void resolve_zero(const DeepSpeedConfig& cfg, int64_t hidden, ResolvedDeepSpeedConfig& out) {
  out.zero = cfg.zero;
  auto fill_only = [](const AutoOr<int64_t>& knob, int64_t from_model, int64_t& field) {
    if (knob.is_auto()) field = from_model;
    else if (knob.has_value()) field = knob.value;
  };
  fill_only(cfg.zero_reduce_bucket_size, hidden * hidden, out.zero.reduce_bucket_size);
  fill_only(cfg.zero_stage3_prefetch_bucket_size, static_cast<int64_t>(0.9 * static_cast<double>(hidden * hidden)),
            out.zero.stage3_prefetch_bucket_size);
  fill_only(cfg.zero_stage3_param_persistence_threshold, 10 * hidden, out.zero.stage3_param_persistence_threshold);
  for (const auto& [what, offload] : {std::pair{"optimizer state", out.zero.offload_optimizer},
                                      std::pair{"parameters", out.zero.offload_param}})
    if (offload.device == "cpu")
      out.notes.push_back(cfg.path + ": offload of " + std::string(what) + " to cpu is a no-op on the CPU build "
                          "(everything already lives in host memory)");
}

}  // namespace

ResolvedDeepSpeedConfig resolve_deepspeed_config(const DeepSpeedConfig& cfg, const TrainArgs& args,
                                                 int64_t world_size, int64_t hidden_size) {
  core::check(world_size >= 1, "resolve_deepspeed_config", "world size must be >= 1");
  core::check(hidden_size >= 1, "resolve_deepspeed_config", "hidden size must be >= 1");
  ResolvedDeepSpeedConfig out;
  out.path = cfg.path;
  out.world_size = world_size;
  out.steps_per_print = cfg.steps_per_print;
  Mismatches mismatches;
  resolve_batch(cfg, args, world_size, out, mismatches);
  out.gradient_clipping = mismatches.fill(cfg.gradient_clipping, args.max_grad_norm, "gradient_clipping",
                                          flag_text("max_grad_norm", show(args.max_grad_norm)), 0.0);
  resolve_precision(cfg, args, out, mismatches);
  resolve_optimizer(cfg, args, out, mismatches);
  if (!mismatches.lines.empty()) {
    std::string list;
    for (const auto& line : mismatches.lines) list += (list.empty() ? "" : "; ") + line;
    throw Error(cfg.path, "DeepSpeed config values disagree with the command line: " + list,
                "set these keys to \"auto\" (HF fills them from the flags) or pass matching flags");
  }
  if (cfg.gradient_clipping.absent() && args.max_grad_norm > 0)
    out.notes.push_back(cfg.path + " has no gradient_clipping key: clipping is off and --max_grad_norm " +
                        show(args.max_grad_norm) + " is ignored, as under FastChat + DeepSpeed (add "
                        "\"gradient_clipping\": \"auto\" to clip)");
  resolve_zero(cfg, hidden_size, out);
  if (!cfg.ignored_keys.empty()) {
    std::string keys;
    for (const auto& k : cfg.ignored_keys) keys += (keys.empty() ? "" : ", ") + k;
    out.notes.push_back(cfg.path + ": keys without effect in zerolora: " + keys);
  }
  if (!cfg.unknown_keys.empty()) {
    std::string keys;
    for (const auto& k : cfg.unknown_keys) keys += (keys.empty() ? "" : ", ") + k;
    out.notes.push_back(cfg.path + ": unknown keys ignored (typo?): " + keys);
  }
  return out;
}

}  // namespace zerolora::train
