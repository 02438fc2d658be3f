// merge_adapter: a merged folder must give the logits of base + adapter, shard above the limit, keep the
// non-weight files, and refuse mismatches without leaving anything behind.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"
#include "kernels/context.h"
#include "model/adapter_io.h"
#include "model/llama.h"
#include "model/merge.h"
#include "model/random_model.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace zerolora;
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kAllTargets = {"q_proj", "k_proj",  "v_proj",   "o_proj",
                                              "gate_proj", "up_proj", "down_proj", "lm_head"};

// A random tiny untied base (F32 or BF16 in the file) with a generation config and a tokenizer config
// that merge must copy unchanged.
io::HfConfig write_base(const fs::path& dir, core::DType file_dtype = core::DType::F32) {
  io::HfConfig c = model::preset_config("tiny");
  model::RandomInit init;
  init.seed = 7;
  init.init_std = 0.1;
  init.jitter_norms = true;
  model::write_random_model(dir.string(), c, init, file_dtype);
  test::write_file(dir / "generation_config.json", "{\"bos_token_id\": 1, \"eos_token_id\": 2}\n");
  test::write_file(dir / "tokenizer_config.json", "{\"add_bos_token\": true}\n");
  return c;
}

// An adapter with non-zero A and B on the given targets, saved as PEFT does.
std::vector<float> write_adapter(const fs::path& dir, const io::HfConfig& c, const std::vector<std::string>& targets,
                                 uint64_t seed = 3) {
  model::LoraConfig lc;
  lc.r = 4;
  lc.alpha = 8;
  lc.target_modules = targets;
  model::LoraLayout layout(c, lc);
  std::vector<float> params = test::random_lora_params<float>(layout, seed, 0.2);
  model::save_peft_adapter(dir.string(), layout, params.data(), "base");
  return params;
}

std::vector<float> logits_of(const std::string& model_dir, const model::LoraLayout* layout, const float* params,
                             const std::vector<int32_t>& ids) {
  auto w = model::load_llama_weights(model_dir, core::DType::F32, core::DType::F32);
  model::LlamaModel<float> m(w, layout);
  model::ModelInput in;
  in.B = 1, in.T = int64_t(ids.size()), in.input_ids = ids.data();
  std::vector<float> logits(ids.size() * size_t(w.config.vocab_size));
  m.forward_logits(in, params, logits.data());
  return logits;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - double(b[i])));
  return d;
}

const std::vector<int32_t> kIds = {1, 17, 200, 5, 93, 255, 0, 41, 128, 7};

// Nothing named like the output (nor a hidden temp sibling) exists beside it.
void expect_no_output(const fs::path& out) {
  EXPECT_FALSE(fs::exists(out)) << out;
  for (const auto& e : fs::directory_iterator(out.parent_path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

}  // namespace

TEST(Merge, MergedModelGivesTheLogitsOfBasePlusAdapter) {
  test::TempDir tmp;
  const io::HfConfig c = write_base(tmp / "base");
  const std::vector<float> params = write_adapter(tmp / "adapter", c, kAllTargets);
  model::LoraConfig lc = model::read_peft_adapter_config((tmp / "adapter").string());
  model::LoraLayout layout(c, lc);

  const model::MergeReport r = model::merge_adapter((tmp / "base").string(), (tmp / "adapter").string(),
                                                    (tmp / "merged").string());
  EXPECT_EQ(r.merged_modules, 7 * c.num_hidden_layers + 1);
  EXPECT_EQ(r.shards, 1);
  EXPECT_EQ(r.torch_dtype, "float32");

  const auto with_adapter = logits_of((tmp / "base").string(), &layout, params.data(), kIds);
  const auto base_only = logits_of((tmp / "base").string(), nullptr, nullptr, kIds);
  const auto merged = logits_of((tmp / "merged").string(), nullptr, nullptr, kIds);
  // the adapter must matter, or the comparison below would prove nothing
  EXPECT_GT(max_abs_diff(with_adapter, base_only), 1e-2);
  EXPECT_LE(max_abs_diff(merged, with_adapter), 1e-5);

  // non-weight files copied as they were
  for (const char* f : {"generation_config.json", "tokenizer_config.json"})
    EXPECT_EQ(test::read_file(tmp / "merged" / f), test::read_file(tmp / "base" / f)) << f;
  EXPECT_TRUE(fs::exists(tmp / "merged" / "model.safetensors"));
  EXPECT_FALSE(fs::exists(tmp / "merged" / "model.safetensors.index.json"));
}

TEST(Merge, ShardsAboveTheSizeLimitAndStillLoads) {
  test::TempDir tmp;
  const io::HfConfig c = write_base(tmp / "base");
  write_adapter(tmp / "adapter", c, {"q_proj", "v_proj", "down_proj"});
  model::MergeOptions opt;
  opt.max_shard_bytes = 100'000;  // the tiny model is ~0.6 MB in f32
  const model::MergeReport r =
      model::merge_adapter((tmp / "base").string(), (tmp / "adapter").string(), (tmp / "sharded").string(), opt);
  model::merge_adapter((tmp / "base").string(), (tmp / "adapter").string(), (tmp / "single").string());
  EXPECT_GT(r.shards, 2);
  EXPECT_TRUE(fs::exists(tmp / "sharded" / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(tmp / "sharded" / "model.safetensors"));
  for (const auto& e : fs::directory_iterator(tmp / "sharded"))
    if (e.path().extension() == ".safetensors") {
      EXPECT_LE(fs::file_size(e.path()), 100'000u + 4096u) << e.path();
    }
  EXPECT_EQ(logits_of((tmp / "sharded").string(), nullptr, nullptr, kIds),
            logits_of((tmp / "single").string(), nullptr, nullptr, kIds));
}

TEST(Merge, DtypeOverrideRoundsTheF32MergeOnceAndUpdatesConfig) {
  test::TempDir tmp;
  const io::HfConfig c = write_base(tmp / "base");
  write_adapter(tmp / "adapter", c, {"q_proj", "o_proj", "lm_head"});
  model::merge_adapter((tmp / "base").string(), (tmp / "adapter").string(), (tmp / "f32").string());
  model::MergeOptions opt;
  opt.dtype = core::DType::BF16;
  const auto r = model::merge_adapter((tmp / "base").string(), (tmp / "adapter").string(), (tmp / "bf16").string(), opt);
  EXPECT_EQ(r.torch_dtype, "bfloat16");
  auto cfg = nlohmann::json::parse(test::read_file(tmp / "bf16" / "config.json"));
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");

  const auto f32 = io::TensorStore::open_model_dir((tmp / "f32").string());
  const auto bf16 = io::TensorStore::open_model_dir((tmp / "bf16").string());
  ASSERT_EQ(f32.names(), bf16.names());
  for (const auto& name : bf16.names()) {
    ASSERT_EQ(bf16.info(name).dtype, core::DType::BF16) << name;
    const core::Tensor a = f32.load(name, core::DType::F32);
    const core::Tensor b = bf16.load(name, core::DType::BF16);
    for (int64_t i = 0; i < a.numel(); ++i)
      ASSERT_EQ(b.bits16()[i], core::f32_to_bf16(a.data<float>()[i])) << name << " element " << i;
  }
}

TEST(Merge, KeepsABf16BaseInBf16) {
  test::TempDir tmp;
  const io::HfConfig c = write_base(tmp / "base", core::DType::BF16);
  write_adapter(tmp / "adapter", c, {"k_proj", "gate_proj"});
  const auto r = model::merge_adapter((tmp / "base").string(), (tmp / "adapter").string(), (tmp / "out").string());
  EXPECT_EQ(r.torch_dtype, "bfloat16");
  const auto base = io::TensorStore::open_model_dir((tmp / "base").string());
  const auto out = io::TensorStore::open_model_dir((tmp / "out").string());
  for (const auto& name : out.names()) EXPECT_EQ(out.info(name).dtype, core::DType::BF16) << name;
  // unadapted tensors are copied bit for bit, adapted ones change
  const std::string same = "model.layers.0.self_attn.q_proj.weight", changed = "model.layers.1.mlp.gate_proj.weight";
  const auto b0 = base.load(same, core::DType::BF16), o0 = out.load(same, core::DType::BF16);
  EXPECT_TRUE(std::equal(b0.bits16(), b0.bits16() + b0.numel(), o0.bits16()));
  const auto b1 = base.load(changed, core::DType::BF16), o1 = out.load(changed, core::DType::BF16);
  EXPECT_FALSE(std::equal(b1.bits16(), b1.bits16() + b1.numel(), o1.bits16()));
}

TEST(Merge, RefusesANonEmptyOutputUnlessOverwrite) {
  test::TempDir tmp;
  const io::HfConfig c = write_base(tmp / "base");
  write_adapter(tmp / "adapter", c, {"q_proj"});
  fs::create_directories(tmp / "out");
  test::write_file(tmp / "out" / "keep.txt", "precious");
  const std::string base = (tmp / "base").string(), adapter = (tmp / "adapter").string(), out = (tmp / "out").string();
  EXPECT_THROW(model::merge_adapter(base, adapter, out), core::Error);
  EXPECT_EQ(test::read_file(tmp / "out" / "keep.txt"), "precious");

  model::MergeOptions opt;
  opt.overwrite = true;
  model::merge_adapter(base, adapter, out, opt);
  EXPECT_FALSE(fs::exists(tmp / "out" / "keep.txt"));
  EXPECT_TRUE(fs::exists(tmp / "out" / "model.safetensors"));

  // an existing empty folder is fine without --overwrite
  fs::create_directories(tmp / "empty");
  model::merge_adapter(base, adapter, (tmp / "empty").string());
  EXPECT_TRUE(fs::exists(tmp / "empty" / "config.json"));

  // writing over an input is refused even with --overwrite
  EXPECT_THROW(model::merge_adapter(base, adapter, base, opt), core::Error);
  EXPECT_THROW(model::merge_adapter(base, adapter, adapter, opt), core::Error);
  EXPECT_TRUE(fs::exists(tmp / "base" / "model.safetensors"));
}

TEST(Merge, RefusesAnAdapterOfAnotherModel) {
  test::TempDir tmp;
  const io::HfConfig c = write_base(tmp / "base");
  io::HfConfig other = c;
  other.hidden_size = 32, other.head_dim = 8;
  write_adapter(tmp / "adapter", other, {"q_proj", "v_proj"});
  try {
    model::merge_adapter((tmp / "base").string(), (tmp / "adapter").string(), (tmp / "out").string());
    FAIL() << "a shape mismatch was accepted";
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("shape"), std::string::npos) << e.what();
  }
  expect_no_output(tmp / "out");
}

TEST(Merge, RefusesAMissingModuleAndMergesLmHeadIntoATiedBase) {
  test::TempDir tmp;
  const io::HfConfig c = write_base(tmp / "base");
  // adapter_config lists k_proj, but the tensors hold only q_proj
  write_adapter(tmp / "adapter", c, {"q_proj"});
  auto cfg = nlohmann::json::parse(test::read_file(tmp / "adapter" / "adapter_config.json"));
  cfg["target_modules"] = {"q_proj", "k_proj"};
  test::write_file(tmp / "adapter" / "adapter_config.json", cfg.dump());
  try {
    model::merge_adapter((tmp / "base").string(), (tmp / "adapter").string(), (tmp / "out").string());
    FAIL() << "a missing module was accepted";
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("k_proj"), std::string::npos) << e.what();
  }
  expect_no_output(tmp / "out");

  // lm_head adapter against a tied base: PEFT allows it, and its merge_and_unload adds the delta into the shared
  // embedding; merge does the same (values against PEFT: tests/model/test_lora_modules.cpp)
  io::HfConfig tied = c;
  tied.tie_word_embeddings = true;
  model::RandomInit init;
  model::write_random_model((tmp / "tied").string(), tied, init, core::DType::F32);
  write_adapter(tmp / "adapter_lm", c, {"q_proj", "lm_head"});
  EXPECT_EQ(model::merge_adapter((tmp / "tied").string(), (tmp / "adapter_lm").string(), (tmp / "out_lm").string())
                .merged_modules,
            c.num_hidden_layers + 1);
}

TEST(Merge, ParsesShardSizesAsHuggingFaceDoes) {
  EXPECT_EQ(model::parse_shard_size("5GB"), 5'000'000'000u);
  EXPECT_EQ(model::parse_shard_size("500MB"), 500'000'000u);
  EXPECT_EQ(model::parse_shard_size("2GiB"), 2u * 1024 * 1024 * 1024);
  EXPECT_EQ(model::parse_shard_size("64kib"), 64u * 1024);
  EXPECT_EQ(model::parse_shard_size("1.5MB"), 1'500'000u);
  EXPECT_EQ(model::parse_shard_size("12345"), 12345u);
  EXPECT_THROW(model::parse_shard_size("big"), core::Error);
  EXPECT_THROW(model::parse_shard_size("5XB"), core::Error);
  EXPECT_THROW(model::parse_shard_size("0MB"), core::Error);
  EXPECT_EQ(model::parse_float_dtype("bf16", "--dtype"), core::DType::BF16);
  EXPECT_EQ(model::parse_float_dtype("float16", "--dtype"), core::DType::F16);
  EXPECT_THROW(model::parse_float_dtype("int8", "--dtype"), core::Error);
}

// merge --device cuda: the updates W += scale B A run on the GPU with the CPU's operations in the CPU's order
// (kernels::add_scaled_product: double fma sums, one rounding), so every output file has the CPU merge's bytes;
// lm_head included.
TEST(Merge, OnTheGpuWritesTheCpuMergesBytes) {
  if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no GPU visible: GPU merge test skipped";
  kernels::CudaContext gpu(0);
  for (const core::DType file_dtype : {core::DType::F32, core::DType::BF16}) {
    test::TempDir tmp;
    const io::HfConfig c = write_base(tmp / "base", file_dtype);
    write_adapter(tmp / "adapter", c, kAllTargets);
    model::merge_adapter((tmp / "base").string(), (tmp / "adapter").string(), (tmp / "cpu").string());
    model::MergeOptions opt;
    opt.context = &gpu.ctx();
    model::merge_adapter((tmp / "base").string(), (tmp / "adapter").string(), (tmp / "gpu").string(), opt);
    for (const auto& e : fs::directory_iterator(tmp / "cpu")) {
      const fs::path other = tmp / "gpu" / e.path().filename();
      ASSERT_TRUE(fs::exists(other)) << other;
      EXPECT_EQ(test::read_file(e.path()), test::read_file(other)) << e.path().filename() << " differs";
    }
  }
}
