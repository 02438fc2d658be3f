#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "core/error.h"
#include "test_util.h"
#include "train/deepspeed_config.h"

using namespace zerolora::train;

using zerolora::test::error_of;

namespace {

std::string golden(const std::string& name) {
  return std::string(ZEROLORA_SOURCE_DIR) + "/tests/golden/deepspeed/" + name;
}

// The flags of FastChat's scripts/train_lora.sh that matter here (fp16, batch 2, GA 1, lr 2e-5).
TrainArgs script_flags(int64_t batch = 2, int64_t ga = 1) {
  TrainArgs a;
  a.per_device_train_batch_size = batch;
  a.gradient_accumulation_steps = ga;
  a.learning_rate = 2e-5;
  a.fp16 = true;
  return a;
}

DeepSpeedConfig parse(const std::string& text) { return parse_deepspeed_config(text, "ds.json"); }


bool has_note(const ResolvedDeepSpeedConfig& r, const std::string& fragment) {
  for (const auto& note : r.notes)
    if (note.find(fragment) != std::string::npos) return true;
  return false;
}

const int64_t kHidden = 4096;

}  // namespace

TEST(DeepSpeedConfig, FastChatS2LoadsAsWritten) {
  DeepSpeedConfig c = load_deepspeed_config(golden("deepspeed_config_s2.json"));
  EXPECT_EQ(c.zero.stage, 2);
  EXPECT_EQ(c.zero.offload_optimizer.device, "cpu");
  EXPECT_FALSE(c.zero.offload_optimizer.pin_memory);  // not set: DeepSpeed default false
  EXPECT_EQ(c.zero.offload_param.device, "none");
  EXPECT_TRUE(c.zero.contiguous_gradients);
  EXPECT_TRUE(c.zero.overlap_comm);
  EXPECT_TRUE(c.fp16_enabled.is_auto());
  EXPECT_TRUE(c.train_micro_batch_size_per_gpu.is_auto());
  EXPECT_TRUE(c.gradient_accumulation_steps.is_auto());
  EXPECT_TRUE(c.train_batch_size.absent());
  EXPECT_TRUE(c.gradient_clipping.absent());
  EXPECT_FALSE(c.has_bf16_section);
  EXPECT_FALSE(c.has_optimizer_section);
  // {"enabled": "auto"} alone: DeepSpeed's scaler keeps its constructor defaults (the gotcha)
  EXPECT_TRUE(c.loss_scale.constructor_defaults);
  EXPECT_EQ(c.loss_scale.initial_scale_power, 32);
  EXPECT_EQ(c.loss_scale.hysteresis, 1);
  EXPECT_TRUE(c.unknown_keys.empty());
  EXPECT_TRUE(c.ignored_keys.empty());
}

TEST(DeepSpeedConfig, FastChatS2ResolvesOnOneAndFourRanks) {
  DeepSpeedConfig c = load_deepspeed_config(golden("deepspeed_config_s2.json"));
  for (int64_t world : {1, 4}) {
    ResolvedDeepSpeedConfig r = resolve_deepspeed_config(c, script_flags(), world, kHidden);
    EXPECT_EQ(r.micro_batch_per_rank, 2);
    EXPECT_EQ(r.gradient_accumulation_steps, 1);
    EXPECT_EQ(r.train_batch_size, 2 * world);  // absent: DeepSpeed derives MB x GAS x world
    EXPECT_TRUE(r.fp16);
    EXPECT_FALSE(r.bf16);
    EXPECT_EQ(r.loss_scale.initial_scale_power, 32);
    EXPECT_EQ(r.gradient_clipping, 0.0);  // FastChat semantics: no key, no clipping
    EXPECT_TRUE(has_note(r, "no gradient_clipping key: clipping is off and --max_grad_norm 1 is ignored"));
    EXPECT_TRUE(has_note(r, "scaler defaults: initial scale 2^32, hysteresis 1"));
    EXPECT_TRUE(has_note(r, "offload of optimizer state to cpu is a no-op"));
    EXPECT_FALSE(r.optimizer_from_config);
    EXPECT_EQ(r.learning_rate, 2e-5);
    EXPECT_EQ(r.zero.reduce_bucket_size, 500000000);  // DeepSpeed default, no "auto" in the file
    EXPECT_EQ(r.zero.stage, 2);
  }
}

// docs/training.md's QLoRA command: --bf16 True with the s2 file (fp16 "auto", no bf16 section).
TEST(DeepSpeedConfig, FastChatS2WithBf16) {
  TrainArgs a = script_flags(1, 1);
  a.fp16 = false;
  a.bf16 = true;
  ResolvedDeepSpeedConfig r =
      resolve_deepspeed_config(load_deepspeed_config(golden("deepspeed_config_s2.json")), a, 4, kHidden);
  EXPECT_FALSE(r.fp16);
  EXPECT_TRUE(r.bf16);
  EXPECT_EQ(r.train_batch_size, 4);
  EXPECT_TRUE(has_note(r, "has no bf16 section; --bf16 turns bf16 on"));
}

TEST(DeepSpeedConfig, FastChatS3LoadsAndResolves) {
  DeepSpeedConfig c = load_deepspeed_config(golden("deepspeed_config_s3.json"));
  EXPECT_EQ(c.zero.stage, 3);
  EXPECT_EQ(c.zero.offload_optimizer.device, "cpu");
  EXPECT_TRUE(c.zero.offload_optimizer.pin_memory);
  EXPECT_EQ(c.zero.offload_param.device, "cpu");
  EXPECT_TRUE(c.zero.offload_param.pin_memory);
  EXPECT_EQ(c.zero.stage3_max_live_parameters, 1000000000);  // written 1e9 (a JSON float)
  EXPECT_EQ(c.zero.stage3_max_reuse_distance, 1000000000);
  EXPECT_EQ(c.zero_stage3_prefetch_bucket_size.value, 500000000);
  EXPECT_EQ(c.zero_stage3_param_persistence_threshold.value, 1000000);
  EXPECT_EQ(c.zero.sub_group_size, 1000000000000);
  EXPECT_TRUE(c.zero.stage3_gather_16bit_weights_on_model_save);
  EXPECT_FALSE(c.loss_scale.constructor_defaults);
  EXPECT_EQ(c.loss_scale.initial_scale_power, 16);
  EXPECT_EQ(c.loss_scale.hysteresis, 2);
  EXPECT_EQ(c.loss_scale.scale_window, 1000);
  EXPECT_EQ(c.loss_scale.min_scale, 1);
  EXPECT_EQ(c.loss_scale.static_scale, 0);
  EXPECT_TRUE(c.unknown_keys.empty());

  for (int64_t world : {1, 4}) {
    ResolvedDeepSpeedConfig r = resolve_deepspeed_config(c, script_flags(2, 4), world, kHidden);
    EXPECT_EQ(r.train_batch_size, world * 2 * 4);  // "auto": world x micro x GAS
    EXPECT_EQ(r.micro_batch_per_rank, 2);
    EXPECT_EQ(r.gradient_accumulation_steps, 4);
    EXPECT_TRUE(r.fp16);
    EXPECT_EQ(r.loss_scale.initial_scale_power, 16);
    EXPECT_EQ(r.zero.stage3_prefetch_bucket_size, 500000000);  // concrete values stay
    EXPECT_EQ(r.zero.stage3_param_persistence_threshold, 1000000);
    EXPECT_TRUE(r.zero.overlap_comm);
    EXPECT_EQ(r.gradient_clipping, 0.0);
    EXPECT_TRUE(has_note(r, "offload of parameters to cpu is a no-op"));
  }
}

TEST(DeepSpeedConfig, AutoBucketSizesFromHiddenSize) {
  DeepSpeedConfig c = parse(R"({"train_micro_batch_size_per_gpu": "auto",
    "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                          "stage3_param_persistence_threshold": "auto"}})");
  ResolvedDeepSpeedConfig r = resolve_deepspeed_config(c, script_flags(), 1, 4096);
  EXPECT_EQ(r.zero.reduce_bucket_size, 16777216);           // 4096^2
  EXPECT_EQ(r.zero.stage3_prefetch_bucket_size, 15099494);  // int(0.9 x 4096^2)
  EXPECT_EQ(r.zero.stage3_param_persistence_threshold, 40960);
  r = resolve_deepspeed_config(c, script_flags(), 1, 5120);
  EXPECT_EQ(r.zero.reduce_bucket_size, 26214400);
  EXPECT_EQ(r.zero.stage3_prefetch_bucket_size, 23592960);
  EXPECT_EQ(r.zero.stage3_param_persistence_threshold, 51200);
}

TEST(DeepSpeedConfig, OverlapCommDefaultsByStage) {
  EXPECT_TRUE(parse(R"({"zero_optimization": {"stage": 3}})").zero.overlap_comm);
  EXPECT_FALSE(parse(R"({"zero_optimization": {"stage": 2}})").zero.overlap_comm);
  EXPECT_EQ(parse("{}").zero.stage, 0);
}

TEST(DeepSpeedConfig, GradientClipping) {
  TrainArgs a = script_flags();
  a.max_grad_norm = 0.3;
  auto with_clip = [&](const std::string& value) {
    return resolve_deepspeed_config(parse(R"({"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": )" +
                                          value + "}"),
                                    a, 2, kHidden);
  };
  EXPECT_EQ(with_clip("\"auto\"").gradient_clipping, 0.3);
  EXPECT_EQ(with_clip("0.3").gradient_clipping, 0.3);
  EXPECT_FALSE(has_note(with_clip("\"auto\""), "clipping is off"));
  std::string msg = error_of([&] { with_clip("1.0"); });
  EXPECT_NE(msg.find("gradient_clipping=1 vs --max_grad_norm 0.3"), std::string::npos) << msg;
}

TEST(DeepSpeedConfig, MismatchesAreListedTogether) {
  DeepSpeedConfig c = parse(R"({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
    "gradient_clipping": 0.5, "fp16": {"enabled": true},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": "auto", "weight_decay": 0.1}}})");
  TrainArgs a = script_flags();
  a.fp16 = false;
  std::string msg = error_of([&] { resolve_deepspeed_config(c, a, 1, kHidden); });
  for (const char* line :
       {"ds.json: DeepSpeed config values disagree with the command line: ",
        "train_micro_batch_size_per_gpu=4 vs --per_device_train_batch_size 2",
        "gradient_accumulation_steps=2 vs --gradient_accumulation_steps 1", "gradient_clipping=0.5 vs --max_grad_norm 1",
        "fp16.enabled=true vs --fp16 False", "optimizer.params.lr=0.0001 vs --learning_rate 2e-05",
        "optimizer.params.betas=[0.9, 0.95] vs --adam_beta1 0.9 --adam_beta2 0.999",
        "optimizer.params.weight_decay=0.1 vs --weight_decay 0", "set these keys to \"auto\""})
    EXPECT_NE(msg.find(line), std::string::npos) << line << "\nmessage: " << msg;
  EXPECT_EQ(msg.find("optimizer.params.eps"), std::string::npos) << msg;  // "auto" is not a mismatch
}

TEST(DeepSpeedConfig, BatchRuleUsesTheRealWorldSize) {
  DeepSpeedConfig c = parse(R"({"train_batch_size": 16, "train_micro_batch_size_per_gpu": "auto",
                                "gradient_accumulation_steps": "auto"})");
  std::string msg = error_of([&] { resolve_deepspeed_config(c, script_flags(), 4, kHidden); });
  EXPECT_NE(msg.find("train_batch_size=16 is not train_micro_batch_size_per_gpu 2 x gradient_accumulation_steps 1 x "
                     "world size 4 = 8"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("run with mpirun -np 8, or pass --gradient_accumulation_steps 2"), std::string::npos) << msg;
  EXPECT_EQ(resolve_deepspeed_config(c, script_flags(), 8, kHidden).train_batch_size, 16);
  EXPECT_EQ(resolve_deepspeed_config(c, script_flags(2, 2), 4, kHidden).train_batch_size, 16);
}

TEST(DeepSpeedConfig, AbsentBatchKeysFollowDeepSpeedInference) {
  // train_batch_size only: DeepSpeed sets GAS = 1 and MB = TBS / world
  DeepSpeedConfig tbs_only = parse(R"({"train_batch_size": 32})");
  ResolvedDeepSpeedConfig r = resolve_deepspeed_config(tbs_only, script_flags(8, 1), 4, kHidden);
  EXPECT_EQ(r.micro_batch_per_rank, 8);
  EXPECT_EQ(r.gradient_accumulation_steps, 1);
  std::string msg = error_of([&] { resolve_deepspeed_config(tbs_only, script_flags(4, 2), 4, kHidden); });
  EXPECT_NE(msg.find("train_micro_batch_size_per_gpu (derived by DeepSpeed)=8 vs --per_device_train_batch_size 4"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("gradient_accumulation_steps (derived by DeepSpeed)=1 vs --gradient_accumulation_steps 2"),
            std::string::npos)
      << msg;
  // TBS + MB: GAS = TBS / MB / world
  r = resolve_deepspeed_config(parse(R"({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto"})"),
                               script_flags(2, 3), 2, kHidden);
  EXPECT_EQ(r.gradient_accumulation_steps, 3);
  EXPECT_EQ(r.train_batch_size, 12);
  // neither TBS nor MB: DeepSpeed refuses
  for (const char* text : {"{}", R"({"gradient_accumulation_steps": "auto"})"}) {
    msg = error_of([&] { resolve_deepspeed_config(parse(text), script_flags(), 1, kHidden); });
    EXPECT_NE(msg.find("Either train_batch_size or train_micro_batch_size_per_gpu needs to be provided"),
              std::string::npos)
        << msg;
  }
}

TEST(DeepSpeedConfig, PrecisionSections) {
  std::string msg = error_of([] { parse(R"({"fp16": {"enabled": true}, "bf16": {"enabled": true}})"); });
  EXPECT_NE(msg.find("ds.json:fp16/bf16: fp16.enabled and bf16.enabled are both true"), std::string::npos) << msg;

  TrainArgs bf16_flags = script_flags();
  bf16_flags.fp16 = false;
  bf16_flags.bf16 = true;
  ResolvedDeepSpeedConfig r = resolve_deepspeed_config(
      parse(R"({"train_micro_batch_size_per_gpu": "auto", "bfloat16": {"enabled": "auto"}})"), bf16_flags, 1, kHidden);
  EXPECT_TRUE(r.bf16);
  EXPECT_FALSE(has_note(r, "no bf16 section"));

  msg = error_of([&] {
    resolve_deepspeed_config(parse(R"({"train_micro_batch_size_per_gpu": "auto", "fp16": {"enabled": true}})"),
                             bf16_flags, 1, kHidden);
  });
  EXPECT_NE(msg.find("fp16.enabled=true vs --fp16 False"), std::string::npos) << msg;

  // a scaling key present: DeepSpeed's config defaults for the rest (2^16, hysteresis 2)
  DeepSpeedConfig c = parse(R"({"fp16": {"enabled": true, "loss_scale_window": 500}})");
  EXPECT_FALSE(c.loss_scale.constructor_defaults);
  EXPECT_EQ(c.loss_scale.initial_scale_power, 16);
  EXPECT_EQ(c.loss_scale.hysteresis, 2);
  EXPECT_EQ(c.loss_scale.scale_window, 500);

  // no fp16 section and --fp16: accelerate adds {"enabled": true}, so the constructor defaults apply
  r = resolve_deepspeed_config(parse(R"({"train_micro_batch_size_per_gpu": "auto"})"), script_flags(), 1, kHidden);
  EXPECT_TRUE(r.fp16);
  EXPECT_TRUE(r.loss_scale.constructor_defaults);
  EXPECT_EQ(r.loss_scale.initial_scale_power, 32);
}

TEST(DeepSpeedConfig, OptimizerSection) {
  const char* text = R"({"train_micro_batch_size_per_gpu": "auto",
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto",
                                             "torch_adam": true}}})";
  TrainArgs a = script_flags();
  a.adam_beta2 = 0.95;
  a.weight_decay = 0.01;
  ResolvedDeepSpeedConfig r = resolve_deepspeed_config(parse(text), a, 1, kHidden);
  EXPECT_TRUE(r.optimizer_from_config);
  EXPECT_EQ(r.learning_rate, 2e-5);
  EXPECT_EQ(r.adamw.beta2, 0.95);
  EXPECT_EQ(r.adamw.weight_decay, 0.01);

  // params without lr: DeepSpeed's optimizer default 1e-3 is the peak rate (HF does not fill absent keys)
  r = resolve_deepspeed_config(parse(R"({"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "Adam",
                                         "params": {"betas": "auto"}}})"),
                               a, 1, kHidden);
  EXPECT_EQ(r.learning_rate, 1e-3);
  EXPECT_TRUE(has_note(r, "optimizer.params has no lr, so DeepSpeed's default 0.001"));

  std::string msg = error_of([] { parse(R"({"optimizer": {"type": "Lamb", "params": {}}})"); });
  EXPECT_NE(msg.find("ds.json:optimizer.type: optimizer 'Lamb' is not supported"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"optimizer": {"type": "Adam", "params": {"adam_w_mode": false}}})"); });
  EXPECT_NE(msg.find("optimizer.params.adam_w_mode: false selects Adam with L2"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"optimizer": {"type": "AdamW", "params": {"max_grad_norm": 1.0}}})"); });
  EXPECT_NE(msg.find("use the top-level \"gradient_clipping\" key"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"optimizer": {"type": "AdamW", "params": {"momentum": 0.9}}})"); });
  EXPECT_NE(msg.find("ds.json:optimizer.params.momentum: is not an AdamW parameter"), std::string::npos) << msg;
}

TEST(DeepSpeedConfig, SchedulerSectionIsRefusedForNow) {
  std::string msg = error_of([] {
    parse(R"({"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}}})");
  });
  EXPECT_NE(msg.find("ds.json:scheduler: the DeepSpeed scheduler 'WarmupLR' is not supported yet"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("--lr_scheduler_type"), std::string::npos) << msg;
}

TEST(DeepSpeedConfig, ZeroSectionRefusals) {
  std::string msg = error_of([] { parse(R"({"zero_optimization": {"stage": 4}})"); });
  EXPECT_NE(msg.find("ds.json:zero_optimization.stage: ZeRO stage 4 does not exist"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}})"); });
  EXPECT_NE(msg.find("zero_optimization.offload_param.device: nvme offload is not supported"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}})"); });
  EXPECT_NE(msg.find("parameter offload exists only in ZeRO stage 3"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}})"); });
  EXPECT_NE(msg.find("optimizer offload needs ZeRO stage 1, 2 or 3"), std::string::npos) << msg;
}

TEST(DeepSpeedConfig, ValueTypes) {
  EXPECT_EQ(parse(R"({"zero_optimization": {"stage": 2, "reduce_bucket_size": 5e8}})").zero_reduce_bucket_size.value,
            500000000);
  std::string msg = error_of([] { parse(R"({"zero_optimization": {"stage": 2.5}})"); });
  EXPECT_NE(msg.find("ds.json:zero_optimization.stage: expected an integer, got 2.5"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"zero_optimization": {"allgather_bucket_size": "5e8"}})"); });
  EXPECT_NE(msg.find("zero_optimization.allgather_bucket_size: expected an integer"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"zero_optimization": {"stage": "auto"}})"); });
  EXPECT_NE(msg.find("zero_optimization.stage: \"auto\" is not allowed here"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"zero_optimization": {"overlap_comm": "yes"}})"); });
  EXPECT_NE(msg.find("zero_optimization.overlap_comm: expected true or false"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"train_micro_batch_size_per_gpu": 0})"); });
  EXPECT_NE(msg.find("must be >= 1"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"fp16": {"enabled": true, "hysteresis": 0}})"); });
  EXPECT_NE(msg.find("ds.json:fp16.hysteresis: must be >= 1"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"fp16": {"enabled": true,}})"); });
  EXPECT_NE(msg.find("ds.json: is not valid JSON"), std::string::npos) << msg;
  msg = error_of([] { load_deepspeed_config("/nonexistent/ds.json"); });
  EXPECT_NE(msg.find("--deepspeed /nonexistent/ds.json: cannot open the file"), std::string::npos) << msg;
  msg = error_of([] { parse(R"({"amp": {"enabled": true}})"); });
  EXPECT_NE(msg.find("apex amp is not supported"), std::string::npos) << msg;
}

TEST(DeepSpeedConfig, UnknownAndIgnoredKeysAreReportedNotFatal) {
  DeepSpeedConfig c = parse(R"({"train_micro_batch_size_per_gpu": "auto", "train_batchsize": 8,
    "wall_clock_breakdown": false, "zero_optimization": {"stage": 1, "reduce_buket_size": 5e8,
    "round_robin_gradients": true}})");
  EXPECT_EQ(c.unknown_keys, (std::vector<std::string>{"zero_optimization.reduce_buket_size", "train_batchsize"}));
  EXPECT_EQ(c.ignored_keys, (std::vector<std::string>{"zero_optimization.round_robin_gradients", "wall_clock_breakdown"}));
  ResolvedDeepSpeedConfig r = resolve_deepspeed_config(c, script_flags(), 1, kHidden);
  EXPECT_TRUE(has_note(r, "unknown keys ignored (typo?): zero_optimization.reduce_buket_size, train_batchsize"));
  EXPECT_TRUE(has_note(r, "keys without effect in zerolora: zero_optimization.round_robin_gradients"));
}
