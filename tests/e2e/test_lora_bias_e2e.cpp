// --lora_bias all | lora_only through the binary on a tiny model with projection biases (attention_bias: q/k/v/o),
// as PEFT 0.12 does them (numerics against PEFT: tests/model/test_lora_modules.cpp):
//   all        every bias trains and is saved (".base_layer.bias" on adapted projections, ".bias" elsewhere);
//   lora_only  the adapted projections' biases train, and the adapter holds none of them (PEFT's quirk);
// both resume exactly from a checkpoint (lora_only's trained biases are kept beside the optimizer state).
// Before: both were refused ("training biases is not implemented").
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>

#include "e2e_util.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "io/torch_pickle.h"

using namespace zerolora;
using namespace zerolora::test;
namespace fs = std::filesystem;

namespace {

// TinyRun's model, rewritten with q/k/v/o biases
struct BiasRun : TinyRun {
  BiasRun() {
    io::HfConfig c = io::load_hf_config(model + "/config.json");
    c.attention_bias = true;
    model::RandomInit init;
    init.seed = 5;
    init.init_std = 0.05;
    model::write_random_model(model, c, init, core::DType::F32);
  }
};

const std::string kFlags = "--max_steps 6 --per_device_train_batch_size 4 --save_steps 3 --lora_r 4 "
                           "--lora_target_modules q_proj v_proj ";

std::vector<std::string> bias_keys(const std::string& adapter_dir) {
  const io::TensorStore s = io::TensorStore::open_file(adapter_dir + "/adapter_model.safetensors");
  std::vector<std::string> keys;
  for (const auto& n : s.names())
    if (n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0) keys.push_back(n);
  return keys;
}

// Runs to the end, then again from a copy of checkpoint-3 alone: the final adapters are byte-identical.
void expect_exact_resume(const BiasRun& run, const std::string& mode) {
  const std::string flags = kFlags + "--lora_bias " + mode;
  const std::string ref = (run.dir / ("ref_" + mode)).string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(ref, flags), &log), 0) << log;
  const std::string resumed = (run.dir / ("resumed_" + mode)).string();
  fs::create_directories(resumed);
  fs::copy(fs::path(ref) / "checkpoint-3", fs::path(resumed) / "checkpoint-3", fs::copy_options::recursive);
  ASSERT_EQ(run_command(run.train_cmd(resumed, flags), &log), 0) << log;
  EXPECT_NE(log.find("checkpoint-3"), std::string::npos) << log;
  EXPECT_EQ(read_file(fs::path(resumed) / "adapter_model.safetensors"),
            read_file(fs::path(ref) / "adapter_model.safetensors"))
      << mode << ": the resumed run's adapter differs from the uninterrupted run's";
}

}  // namespace

TEST(LoraBiasE2E, AllTrainsAndSavesEveryBias) {
  BiasRun run;
  const std::string out = (run.dir / "all").string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out, kFlags + "--lora_bias all"), &log), 0) << log;
  const io::HfConfig c = io::load_hf_config(run.model + "/config.json");
  const auto keys = bias_keys(out);
  EXPECT_EQ(int64_t(keys.size()), 4 * c.num_hidden_layers);  // q, k, v, o of every layer
  const io::TensorStore adapter = io::TensorStore::open_file(out + "/adapter_model.safetensors");
  const io::TensorStore base = io::TensorStore::open_model_dir(run.model);
  for (const char* name : {"q_proj.base_layer.bias", "k_proj.bias", "v_proj.base_layer.bias", "o_proj.bias"}) {
    const std::string key = std::string("base_model.model.model.layers.0.self_attn.") + name;
    ASSERT_TRUE(adapter.has(key)) << key;
    std::string base_name = std::string("model.layers.0.self_attn.") + name;
    if (base_name.find(".base_layer") != std::string::npos) base_name.erase(base_name.find(".base_layer"), 11);
    const core::Tensor got = adapter.load(key, core::DType::F32);
    const core::Tensor was = base.load(base_name, core::DType::F32);
    double moved = 0;
    for (int64_t i = 0; i < got.numel(); ++i)
      moved = std::max(moved, double(std::abs(got.data<float>()[i] - was.data<float>()[i])));
    EXPECT_GT(moved, 1e-5) << key << " did not train";
  }
  EXPECT_EQ(read_json_file(fs::path(out) / "adapter_config.json")["bias"], "all");
  // optimizer.pt as HF Trainer's: the LoRA tensors in the weight-decay group, the biases (numbered after them)
  // in the no-decay group (measured with transformers 4.44.2: Trainer.create_optimizer on a PEFT bias="all" model)
  const io::PtValue opt = io::load_torch_file(out + "/checkpoint-6/optimizer.pt");
  const auto& groups = opt.at("param_groups", "optimizer.pt").items("param_groups");
  ASSERT_EQ(groups.size(), 2u);
  const auto& decay = groups[0].at("params", "g0").items("g0");
  const auto& no_decay = groups[1].at("params", "g1").items("g1");
  EXPECT_EQ(int64_t(decay.size()), 2 * 2 * c.num_hidden_layers);  // lora_A, lora_B of q and v
  ASSERT_EQ(int64_t(no_decay.size()), 4 * c.num_hidden_layers);
  EXPECT_EQ(no_decay.front().as_int("g1"), int64_t(decay.size()));
}

TEST(LoraBiasE2E, LoraOnlySavesNoBiasAsPeft) {
  BiasRun run;
  const std::string out = (run.dir / "lora_only").string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out, kFlags + "--lora_bias lora_only"), &log), 0) << log;
  EXPECT_TRUE(bias_keys(out).empty());
  EXPECT_EQ(read_json_file(fs::path(out) / "adapter_config.json")["bias"], "lora_only");
  // the biases did train: the LoRA weights differ from a --lora_bias none run's
  const std::string none = (run.dir / "none").string();
  ASSERT_EQ(run_command(run.train_cmd(none, kFlags + "--lora_bias none"), &log), 0) << log;
  EXPECT_NE(read_file(fs::path(out) / "adapter_model.safetensors"),
            read_file(fs::path(none) / "adapter_model.safetensors"));
}

TEST(LoraBiasE2E, ResumesExactly) {
  BiasRun run;
  expect_exact_resume(run, "all");
  expect_exact_resume(run, "lora_only");
}

// --weight_decay with trained biases, as HF Trainer: the LoRA weights decay, the biases do not. After one step (the
// same gradients either way) the biases equal a --weight_decay 0 run's bit for bit and the LoRA weights do not;
// optimizer.pt's groups say 0.1 and 0.0. Before: refused ("HF Trainer does not decay biases, and zerolora's AdamW
// would").
TEST(LoraBiasE2E, WeightDecaySkipsTheBiasesAsHfTrainer) {
  BiasRun run;
  const std::string flags = "--max_steps 1 --per_device_train_batch_size 4 --save_steps 1 --lora_r 4 "
                            "--lora_target_modules q_proj v_proj --lora_bias all --learning_rate 0.05 ";
  const std::string wd = (run.dir / "wd").string(), plain = (run.dir / "plain").string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(wd, flags + "--weight_decay 0.1"), &log), 0) << log;
  ASSERT_EQ(run_command(run.train_cmd(plain, flags + "--weight_decay 0"), &log), 0) << log;
  const io::TensorStore a = io::TensorStore::open_file(wd + "/adapter_model.safetensors");
  const io::TensorStore b = io::TensorStore::open_file(plain + "/adapter_model.safetensors");
  int biases = 0, lora_differs = 0;
  for (const auto& name : a.names()) {
    const core::Tensor xa = a.load(name, core::DType::F32), xb = b.load(name, core::DType::F32);
    const bool same = xa.numel() == xb.numel() &&
                      std::memcmp(xa.data<float>(), xb.data<float>(), size_t(xa.numel()) * sizeof(float)) == 0;
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
      ++biases;
      EXPECT_TRUE(same) << name << ": a bias was decayed";
    } else if (name.find("lora_A") != std::string::npos) {
      lora_differs += !same;
    }
  }
  EXPECT_GT(biases, 0);
  EXPECT_GT(lora_differs, 0) << "weight decay did not reach the LoRA weights";
  const io::PtValue opt = io::load_torch_file(wd + "/checkpoint-1/optimizer.pt");
  const auto& groups = opt.at("param_groups", "optimizer.pt").items("param_groups");
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].at("weight_decay", "g0").as_number("g0"), 0.1);
  EXPECT_EQ(groups[1].at("weight_decay", "g1").as_number("g1"), 0.0);
}

// --lora_bias all with --q_lora: the NF4 projections add the trained biases instead of their own (the kernel test:
// Nf4Linear.FrozenWeightBiasReplacesTheNf4Bias), so they train, are saved as PEFT saves them and resume exactly.
// Before: refused ("training the biases of NF4 projections is not implemented").
TEST(LoraBiasE2E, QloraTrainsTheBiases) {
  BiasRun run;
  const std::string flags = kFlags + "--lora_bias all --q_lora True --bf16 True ";
  const std::string out = (run.dir / "qlora").string();
  std::string log;
  ASSERT_EQ(run_command(run.train_cmd(out, flags), &log), 0) << log;
  const io::HfConfig c = io::load_hf_config(run.model + "/config.json");
  EXPECT_EQ(int64_t(bias_keys(out).size()), 4 * c.num_hidden_layers);
  const io::TensorStore adapter = io::TensorStore::open_file(out + "/adapter_model.safetensors");
  const io::TensorStore base = io::TensorStore::open_model_dir(run.model);
  const core::Tensor got = adapter.load("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias",
                                        core::DType::F32);
  const core::Tensor was = base.load("model.layers.0.self_attn.q_proj.bias", core::DType::F32);
  double moved = 0;
  for (int64_t i = 0; i < got.numel(); ++i)
    moved = std::max(moved, double(std::abs(got.data<float>()[i] - was.data<float>()[i])));
  EXPECT_GT(moved, 1e-5) << "the q_proj bias did not train under --q_lora";
  // exact resume from checkpoint-3
  const std::string resumed = (run.dir / "qlora_resumed").string();
  fs::create_directories(resumed);
  fs::copy(fs::path(out) / "checkpoint-3", fs::path(resumed) / "checkpoint-3", fs::copy_options::recursive);
  ASSERT_EQ(run_command(run.train_cmd(resumed, flags), &log), 0) << log;
  EXPECT_EQ(read_file(fs::path(resumed) / "adapter_model.safetensors"),
            read_file(fs::path(out) / "adapter_model.safetensors"));
}

namespace {
std::string mpirun2() {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 "
         "mpirun --oversubscribe --mca btl_vader_single_copy_mechanism none -np 2 ";
}
std::string ds_config(const TempDir& dir, int stage) {
  const std::string path = (dir / ("ds_s" + std::to_string(stage) + ".json")).string();
  write_file(path, "{\"zero_optimization\": {\"stage\": " + std::to_string(stage) +
                       ", \"overlap_comm\": true, \"contiguous_gradients\": true, \"reduce_bucket_size\": 1000,"
                       " \"stage3_param_persistence_threshold\": 0, \"stage3_prefetch_bucket_size\": 20000},"
                       " \"train_micro_batch_size_per_gpu\": \"auto\", \"gradient_accumulation_steps\": \"auto\","
                       " \"train_batch_size\": \"auto\", \"gradient_clipping\": \"auto\"}");
  return path;
}
}  // namespace

// ZeRO-2/3 reduce-scatter the gradients in buckets over the flat buffer: the bias slots (after the LoRA slots) are
// in them, so the sharded stages train the biases as stage 0 does. Same 2 ranks, same micro-batches: only the
// order of the clipping norm's partial sums differs (~1e-7 relative, as ZeroMpi.QLoraWithStage3...), bound 1e-5.
TEST(LoraBiasMpi, ShardedStagesTrainTheBiasesAsStage0) {
  BiasRun run;
  std::string log;
  const std::string flags = kFlags + "--lora_bias all --per_device_train_batch_size 2 --deepspeed ";
  std::map<int, std::string> out;
  for (int stage : {0, 2, 3}) {
    out[stage] = (run.dir / ("s" + std::to_string(stage))).string();
    ASSERT_EQ(run_command(mpirun2() + run.train_cmd(out[stage], flags + ds_config(run.dir, stage)), &log), 0) << log;
  }
  const io::TensorStore ref = io::TensorStore::open_file(out[0] + "/adapter_model.safetensors");
  for (int stage : {2, 3}) {
    const io::TensorStore got = io::TensorStore::open_file(out[stage] + "/adapter_model.safetensors");
    double diff = 0, scale = 0;
    int biases = 0;
    for (const auto& name : ref.names()) {
      const core::Tensor x = got.load(name, core::DType::F32), y = ref.load(name, core::DType::F32);
      biases += name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
      for (int64_t i = 0; i < y.numel(); ++i) {
        diff = std::max(diff, double(std::abs(x.data<float>()[i] - y.data<float>()[i])));
        scale = std::max(scale, double(std::abs(y.data<float>()[i])));
      }
    }
    EXPECT_GT(biases, 0);
    EXPECT_LE(diff / scale, 1e-5) << "stage " << stage;
  }
}
