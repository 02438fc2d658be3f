#include "train/training_checkpoint.h"

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/checkpoint_dir.h"
#include "io/safetensors.h"
#include "model/adapter_io.h"

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
  io::write_safetensors(out.file("optimizer.safetensors"), {{"exp_avg", wrap(s.exp_avg)}, {"exp_avg_sq", wrap(s.exp_avg_sq)}},
                        {{"optimizer", "AdamW"}, {"step", std::to_string(s.optimizer_steps)}});
  io::write_file_synced(out.file("scheduler.json"), s.scheduler.dump(2) + "\n");
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
  model::load_peft_adapter(dir, layout, s.params.data());
  const std::string opt_path = (fs::path(dir) / "optimizer.safetensors").string();
  core::check(fs::exists(opt_path), opt_path, "missing from the checkpoint",
              "the checkpoint is incomplete; resume from an earlier checkpoint-N");
  io::TensorStore store = io::TensorStore::open_file(opt_path);
  core::Tensor m = store.load("exp_avg", core::DType::F32, {n});
  core::Tensor v = store.load("exp_avg_sq", core::DType::F32, {n});
  s.exp_avg.assign(m.data<float>(), m.data<float>() + n);
  s.exp_avg_sq.assign(v.data<float>(), v.data<float>() + n);
  auto meta = io::SafetensorsFile::open(opt_path)->metadata();
  core::check(meta.count("step") > 0, opt_path, "has no optimizer step in its metadata");
  s.optimizer_steps = std::stoll(meta.at("step"));
  s.scheduler = read_json(fs::path(dir) / "scheduler.json");
  s.args = read_json(fs::path(dir) / "training_args.json");
  s.state = load_trainer_state((fs::path(dir) / "trainer_state.json").string());
  return s;
}

}  // namespace zerolora::train
