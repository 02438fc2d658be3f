// Resume through the zerolora binary from a checkpoint folder in HF Trainer's form: the PEFT adapter,
// optimizer.pt, scheduler.pt and trainer_state.json only (our optimizer.safetensors, scheduler.json,
// training_args.json and zerolora_state.json removed). The run continues exactly as the uninterrupted one.
// (Resume from a folder HF Trainer itself wrote: tests/train/test_hf_checkpoint.cpp.)
#include <gtest/gtest.h>

#include "e2e_util.h"

using namespace zerolora;
using namespace zerolora::test;
namespace fs = std::filesystem;

TEST(HfResumeE2E, ResumesFromHfFormCheckpointExactly) {
  TinyRun run;
  const std::string straight = (run.dir / "straight").string(), resumed = (run.dir / "resumed").string();
  const std::string flags =
      "--max_steps 6 --save_steps 3 --per_device_train_batch_size 4 --weight_decay 0.01 "
      "--lora_target_modules q_proj v_proj down_proj --lora_r 4";
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(straight, flags), &log), 0) << log;
  fs::create_directories(resumed);
  fs::copy(fs::path(straight) / "checkpoint-3", fs::path(resumed) / "checkpoint-3");
  for (const char* ours : {"optimizer.safetensors", "scheduler.json", "training_args.json", "zerolora_state.json"})
    fs::remove(fs::path(resumed) / "checkpoint-3" / ours);
  ASSERT_TRUE(fs::exists(fs::path(resumed) / "checkpoint-3" / "optimizer.pt"));
  ASSERT_EQ(run_command(run.train_cmd(resumed, flags), &log), 0) << log;
  EXPECT_NE(log.find("resumed from"), std::string::npos) << log;
  EXPECT_EQ(read_file(fs::path(resumed) / "adapter_model.safetensors"),
            read_file(fs::path(straight) / "adapter_model.safetensors"))
      << "the run resumed from the HF-form checkpoint differs from the uninterrupted one";
  // and the optimizer.pt it wrote at step 6 holds the same moments as the uninterrupted run's
  EXPECT_EQ(read_file(fs::path(resumed) / "checkpoint-6" / "optimizer.pt"),
            read_file(fs::path(straight) / "checkpoint-6" / "optimizer.pt"));
}
