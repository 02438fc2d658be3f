// LoRA on embed_tokens and lm_head through the binary: an adapter with those targets (as PEFT writes them) given
// by --lora_weight_path trains (both tensors move), is saved under PEFT's names (lora_embedding_A/B) and resumes
// exactly from a checkpoint. Numerics against PEFT: tests/model/test_lora_modules.cpp.
#include <gtest/gtest.h>

#include <filesystem>

#include "e2e_util.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/adapter_io.h"

using namespace zerolora;
using namespace zerolora::test;
namespace fs = std::filesystem;

TEST(LoraModulesE2E, EmbedTokensAndLmHeadTrainFromAPeftAdapter) {
  TinyRun run;
  const io::HfConfig c = io::load_hf_config(run.model + "/config.json");
  model::LoraConfig lc;
  lc.r = 4;
  lc.alpha = 8;
  lc.dropout = 0;
  lc.target_modules = {"embed_tokens", "q_proj", "lm_head"};
  const model::LoraLayout layout(c, lc);
  std::vector<float> params(size_t(layout.numel()));
  model::init_lora_params(layout, params.data(), 11);
  const std::string start = (run.dir / "start").string();
  model::save_peft_adapter(start, layout, params.data(), run.model);

  const std::string flags = "--max_steps 6 --per_device_train_batch_size 4 --save_steps 3 --lora_weight_path " + start;
  const std::string out = (run.dir / "out").string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out, flags), &log), 0) << log;
  const io::TensorStore before = io::TensorStore::open_file(start + "/adapter_model.safetensors");
  const io::TensorStore after = io::TensorStore::open_file(out + "/adapter_model.safetensors");
  for (const char* name : {"base_model.model.model.embed_tokens.lora_embedding_A",
                           "base_model.model.model.embed_tokens.lora_embedding_B",
                           "base_model.model.lm_head.lora_A.weight", "base_model.model.lm_head.lora_B.weight"}) {
    ASSERT_TRUE(after.has(name)) << name;
    const core::Tensor x = after.load(name, core::DType::F32), y = before.load(name, core::DType::F32);
    double moved = 0;
    for (int64_t i = 0; i < x.numel(); ++i)
      moved = std::max(moved, double(std::abs(x.data<float>()[i] - y.data<float>()[i])));
    EXPECT_GT(moved, 1e-5) << name << " did not train";
  }
  // resumed from checkpoint-3 alone: the same final adapter
  const std::string resumed = (run.dir / "resumed").string();
  fs::create_directories(resumed);
  fs::copy(fs::path(out) / "checkpoint-3", fs::path(resumed) / "checkpoint-3", fs::copy_options::recursive);
  ASSERT_EQ(run_command(run.train_cmd(resumed, flags), &log), 0) << log;
  EXPECT_EQ(read_file(fs::path(resumed) / "adapter_model.safetensors"), read_file(fs::path(out) / "adapter_model.safetensors"));
}
