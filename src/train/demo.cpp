#include "train/demo.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "dist/comm.h"
#include "io/checkpoint_dir.h"
#include "model/adapter_io.h"
#include "model/generate.h"
#include "model/random_model.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/bpe_trainer.h"
#include "train/args.h"
#include "train/trainer.h"

namespace zerolora::train {

namespace fs = std::filesystem;

std::string synthetic_conversations_json(size_t n, uint64_t seed) {
  static const char* things[] = {"sky", "grass", "sun", "snow", "sea", "night", "rose", "coal"};
  static const char* colours[] = {"blue", "green", "yellow", "white", "blue", "black", "red", "black"};
  static const char* countries[] = {"France", "Japan", "Italy", "Spain", "Egypt", "Peru"};
  static const char* capitals[] = {"Paris", "Tokyo", "Rome", "Madrid", "Cairo", "Lima"};
  std::mt19937_64 rng(seed);
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < n; ++i) {
    nlohmann::json conv = nlohmann::json::array();
    const int turns = 1 + int(rng() % 2);
    for (int t = 0; t < turns; ++t) {
      std::string q, a;
      switch (rng() % 3) {
        case 0: {
          size_t k = rng() % 8;
          q = std::string("What colour is the ") + things[k] + "?";
          a = std::string("The ") + things[k] + " is " + colours[k] + ".";
          break;
        }
        case 1: {
          int x = int(rng() % 10), y = int(rng() % 10);
          q = "What is " + std::to_string(x) + " plus " + std::to_string(y) + "?";
          a = std::to_string(x) + " plus " + std::to_string(y) + " is " + std::to_string(x + y) + ".";
          break;
        }
        default: {
          size_t k = rng() % 6;
          q = std::string("What is the capital of ") + countries[k] + "?";
          a = std::string("The capital of ") + countries[k] + " is " + capitals[k] + ".";
        }
      }
      conv.push_back({{"from", "human"}, {"value", q}});
      conv.push_back({{"from", "gpt"}, {"value", a}});
    }
    rows.push_back({{"id", "synthetic_" + std::to_string(i)}, {"conversations", conv}});
  }
  return rows.dump(1) + "\n";
}

void write_demo_model(const std::string& dir, const std::vector<std::string>& corpus, uint64_t seed) {
  fs::create_directories(dir);
  tokenizer::BpeTrainerOptions bo;
  bo.vocab_size = 512;
  nlohmann::json tok = tokenizer::train_byte_level_bpe(corpus, bo);
  io::write_file_synced((fs::path(dir) / "tokenizer.json").string(), tok.dump() + "\n");
  io::HfConfig c = model::preset_config("small");
  // the model's vocabulary is exactly the tokenizer's (a small corpus may yield fewer merges than asked
  // for), so every id the model can emit decodes
  c.vocab_size = int64_t(tok["model"]["vocab"].size());
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  model::RandomInit init;
  init.seed = seed;
  model::write_random_model(dir, c, init, core::DType::F32);
}

namespace {

// A generation prompt in the template the run trained with.
std::string generation_prompt(const std::string& conv_template, const std::string& question) {
  if (conv_template == "chatml")
    return "<|im_start|>user\n" + question + "<|im_end|>\n<|im_start|>assistant\n";
  return "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
         "detailed, and polite answers to the user's questions. USER: " + question + " ASSISTANT:";
}

// Greedy answers to a few questions with the trained adapter, so the user sees what it learned.
void generate_samples(const std::string& model_dir, const std::string& adapter_dir, const std::string& conv_template) {
  auto tok = tokenizer::load_tokenizer(model_dir);
  auto weights = model::load_llama_weights(model_dir, core::DType::F32, core::DType::F32);
  const model::LoadedAdapter adapter = model::load_adapter_for_model(weights.config, adapter_dir);
  model::KvCacheDecoder<float> decoder(weights, adapter.layout.get(), adapter.data());
  model::GenerationOptions go;
  go.max_new_tokens = 24;
  go.stop_ids = model::model_stop_ids(model_dir, weights.config);
  for (const char* stop : {"<|im_end|>", "</s>"})
    if (tok->token_id(stop) >= 0) go.stop_ids.push_back(tok->token_id(stop));
  std::printf("\ngenerating with the adapter (greedy):\n");
  for (const char* q : {"What is the capital of Japan?", "What colour is the grass?", "What is 3 plus 4?"}) {
    auto prompt = tok->encode(generation_prompt(conv_template, q), true);
    auto res = model::generate(decoder, prompt, go);
    std::printf("  Q: %s\n  A: %s\n", q, tok->decode(res.tokens, true).c_str());
  }
}

}  // namespace

int run_demo(const std::vector<std::string>& argv) {
  std::string out = "zerolora-demo", model_dir, data_path, steps = "150";
  std::vector<std::string> extra;
  for (size_t i = 0; i < argv.size(); ++i) {
    auto value = [&]() -> std::string {
      core::check(i + 1 < argv.size(), argv[i], "needs a value");
      return argv[++i];
    };
    if (argv[i] == "--output_dir") out = value();
    else if (argv[i] == "--model_name_or_path") model_dir = value();
    else if (argv[i] == "--data_path") data_path = value();
    else if (argv[i] == "--max_steps") steps = value();
    else extra.push_back(argv[i]);
  }
  fs::create_directories(out);
  std::string conv_template = "vicuna_v1.1";
  if (data_path.empty()) {
    data_path = (fs::path(out) / "synthetic_conversations.json").string();
    io::write_file_synced(data_path, synthetic_conversations_json(600, 7));
    std::printf("wrote %s (600 synthetic conversations)\n", data_path.c_str());
  }
  if (model_dir.empty()) {
    model_dir = (fs::path(out) / "model").string();
    // the tokenizer learns its merges from the rendered conversations
    std::vector<std::string> corpus;
    auto rows = nlohmann::json::parse(synthetic_conversations_json(600, 7));
    for (const auto& r : rows)
      for (const auto& m : r["conversations"]) corpus.push_back(m["value"].get<std::string>());
    write_demo_model(model_dir, corpus, 11);
    conv_template = "chatml";  // a byte-level BPE tokenizer: labels from turn boundaries, not vicuna offsets
    std::printf("wrote %s (random 'small' Llama: 4 layers, hidden 256; byte-level BPE tokenizer, 512 tokens)\n",
                model_dir.c_str());
  }
  std::vector<std::string> targs = {"--model_name_or_path", model_dir, "--data_path", data_path,
                                    "--output_dir", (fs::path(out) / "run").string(), "--max_steps", steps,
                                    "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
                                    "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.03",
                                    "--logging_steps", "10", "--save_steps", "50", "--save_total_limit", "2",
                                    "--model_max_length", "128", "--padding", "longest", "--lora_r", "16",
                                    "--lora_alpha", "32", "--lora_dropout", "0.0", "--lora_target_modules",
                                    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                    "--conv_template", conv_template, "--resume_from_checkpoint", "False"};
  targs.insert(targs.end(), extra.begin(), extra.end());
  std::printf("zerolora train");
  for (const auto& a : targs) std::printf(" %s", a.c_str());
  std::printf("\n");
  TrainArgs args = parse_train_args(targs);
  auto comm = dist::make_comm();
  TrainResult r = run_training(args, *comm);
  std::printf("\ndemo: %lld steps, mean loss %.4f; adapter in %s/run\n", (long long)r.global_step, r.train_loss,
              out.c_str());
  if (comm->rank() == 0) generate_samples(model_dir, (fs::path(out) / "run").string(), conv_template);
  return 0;
}

}  // namespace zerolora::train
