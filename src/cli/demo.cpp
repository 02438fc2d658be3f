#include "cli/demo.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/conversation.h"
#include "data/templates.h"
#include "dist/comm.h"
#include "io/checkpoint_dir.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "model/adapter_io.h"
#include "model/generate.h"
#include "model/random_model.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/bpe_trainer.h"
#include "train/args.h"
#include "train/trainer.h"

namespace zerolora::cli {

using namespace zerolora::train;  // the demo is a client of the training library

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
  // Tied embeddings, projections at std 0.06 (~1/sqrt(hidden 256)) and embeddings at 0.1: a random model
  // whose layers pass signal and whose output logits can reach confident values, so LoRA (which trains the
  // projections only) can learn to copy words in a few hundred steps. With every tensor at std 0.02 (the HF
  // default) the logits stay within ~0.3 of each other and the same run learns nothing in 600 steps.
  c.tie_word_embeddings = true;
  c.torch_dtype = "float32";
  model::RandomInit init;
  init.seed = seed;
  init.init_std = 0.06;
  const float embedding_scale = float(0.1 / init.init_std);
  auto source = model::random_tensor_source(init);
  std::vector<std::pair<std::string, core::Tensor>> tensors;
  for (const auto& [name, shape] : model::llama_tensor_shapes(c)) {
    core::Tensor t = source(name, core::DType::F32, shape);
    if (name.find("embed_tokens") != std::string::npos || name.find("lm_head") != std::string::npos)
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] *= embedding_scale;
    tensors.push_back({name, t});
  }
  io::write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors);
  io::write_file_synced((fs::path(dir) / "config.json").string(), io::hf_config_to_json(c).dump(2) + "\n");
}

// ---- the demo's task: a skill, not a lookup table -------------------------------------------------------
// "Repeat after me: river lamp stone" -> "river lamp stone": three different words from a 40-word list. The
// held-out questions are word sequences the training set never contains (59,280 are possible; 3,000 are
// trained), so answering them takes the skill (find the three words, copy them in order), not a memorised
// answer; the random base model answers none. (Saying them backwards, or 3-4 words, needs more steps than a
// few minutes on 2 cores give this model.)
namespace {

const char* const kDemoWords[] = {"apple", "river", "stone", "lamp",  "cloud", "horse", "green", "seven",
                                  "table", "night", "bread", "chair", "water", "music", "light", "paper",
                                  "glass", "tiger", "smile", "train", "house", "field", "storm", "honey",
                                  "metal", "ocean", "plant", "queen", "sugar", "wheel", "zebra", "robot",
                                  "candle", "forest", "garden", "pencil", "rocket", "silver", "winter", "yellow"};
constexpr size_t kNumDemoWords = sizeof(kDemoWords) / sizeof(kDemoWords[0]);
const char* const kDemoPrompt = "Repeat after me: ";

DemoQuestion demo_question(std::mt19937_64& rng) {
  std::string words;
  std::vector<size_t> picked;
  while (picked.size() < 3) {
    const size_t k = rng() % kNumDemoWords;
    if (std::find(picked.begin(), picked.end(), k) != picked.end()) continue;
    picked.push_back(k);
    words += (words.empty() ? "" : " ") + std::string(kDemoWords[k]);
  }
  // the answer repeats the words after a colon, as the question has them: each word is then the same token
  // (" river", with its space) in both, and copying it is all there is to learn
  return {kDemoPrompt + words, "Sure: " + words};
}

}  // namespace

DemoData make_demo_data(size_t n_train, size_t n_held_out, uint64_t seed) {
  std::mt19937_64 rng(seed);
  DemoData d;
  std::set<std::string> held;  // the held-out answers (= word sequences)
  while (d.held_out.size() < n_held_out) {
    DemoQuestion q = demo_question(rng);
    if (held.insert(q.answer).second) d.held_out.push_back(q);
  }
  d.train = nlohmann::json::array();
  while (d.train.size() < n_train) {
    nlohmann::json conv = nlohmann::json::array();
    const int turns = 1 + int(rng() % 2);
    for (int t = 0; t < turns;) {
      DemoQuestion q = demo_question(rng);
      if (held.count(q.answer)) continue;
      conv.push_back({{"from", "human"}, {"value", q.question}});
      conv.push_back({{"from", "gpt"}, {"value", q.answer}});
      ++t;
    }
    d.train.push_back({{"id", "demo_" + std::to_string(d.train.size())}, {"conversations", conv}});
  }
  return d;
}

namespace {

// The generation prompt exactly as training rendered the question (and as `zerolora chat` renders it).
std::vector<int32_t> generation_prompt(const tokenizer::Tokenizer& tok, const std::string& conv_template,
                                       const std::string& question) {
  const data::TemplateStyle style = data::find_template(conv_template);
  data::Conversation conv;
  conv.messages.push_back({data::Role::User, question});
  conv.messages.push_back({data::Role::Assistant, ""});
  return tok.encode(data::render_prompt(style, conv), !data::template_renders_bos(style));
}

// How the user can run this binary again from here: ./build/zerolora when it sits below the working folder.
std::string self_command() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "zerolora";
  const fs::path rel = fs::relative(exe, fs::current_path(ec), ec);
  if (!ec && !rel.empty() && *rel.begin() != "..") return "./" + rel.string();
  return exe.string();
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \n\t"), e = s.find_last_not_of(" \n\t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

}  // namespace

DemoScore score_demo_questions(const std::string& model_dir, const std::string& adapter_dir,
                               const std::string& conv_template, const std::vector<DemoQuestion>& questions,
                               size_t show) {
  auto tok = tokenizer::load_tokenizer(model_dir);
  auto weights = model::load_llama_weights(model_dir, core::DType::F32, core::DType::F32);
  model::LoadedAdapter adapter;
  if (!adapter_dir.empty()) adapter = model::load_adapter_for_model(weights.config, adapter_dir);
  model::KvCacheDecoder<float> decoder(weights, adapter.layout.get(), adapter.data());
  model::GenerationOptions go;
  go.max_new_tokens = 16;
  go.stop_ids = model::model_stop_ids(model_dir, weights.config);
  for (const char* stop : {"<|im_end|>", "</s>"})
    if (tok->token_id(stop) >= 0) go.stop_ids.push_back(tok->token_id(stop));
  DemoScore s;
  s.total = questions.size();
  for (size_t i = 0; i < questions.size(); ++i) {
    auto prompt = generation_prompt(*tok, conv_template, questions[i].question);
    auto res = model::generate(decoder, prompt, go);
    std::string answer = trim(tok->decode(res.tokens, true));
    const bool ok = answer == questions[i].answer;
    s.correct += ok;
    s.answers.push_back(answer);
    if (i < show) {
      std::string shown = answer.size() > 48 ? answer.substr(0, 45) + "..." : answer;
      std::printf("  %-40s -> %-40s %s\n", questions[i].question.c_str(), ("\"" + shown + "\"").c_str(),
                  ok ? "right" : ("wrong (expected \"" + questions[i].answer + "\")").c_str());
    }
  }
  return s;
}

int run_demo(const std::vector<std::string>& argv) {
  std::string out = "zerolora-demo", model_dir, data_path, steps = "500";
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
  const DemoData demo = make_demo_data(kDemoTrainConversations, kDemoHeldOut, 7);
  const bool own_data = data_path.empty();
  if (own_data) {
    data_path = (fs::path(out) / "synthetic_conversations.json").string();
    io::write_file_synced(data_path, demo.train.dump(1) + "\n");
    std::printf("wrote %s (%zu synthetic conversations: \"%s<3 of %zu words>\"; %zu more such questions, held out "
                "of it, score the model before and after)\n",
                data_path.c_str(), demo.train.size(), kDemoPrompt, kNumDemoWords, demo.held_out.size());
  }
  if (model_dir.empty()) {
    model_dir = (fs::path(out) / "model").string();
    // the tokenizer learns its merges from the training conversations (no held-out text)
    std::vector<std::string> corpus;
    for (const auto& r : demo.train)
      for (const auto& m : r["conversations"]) corpus.push_back(m["value"].get<std::string>());
    write_demo_model(model_dir, corpus, 11);
    conv_template = "chatml";  // a byte-level BPE tokenizer: labels from turn boundaries, not vicuna offsets
    std::printf("wrote %s (random 'small' Llama: 4 layers, hidden 256, tied embeddings; byte-level BPE tokenizer)\n",
                model_dir.c_str());
  }
  const std::string run_dir = (fs::path(out) / "run").string();
  auto comm = dist::make_comm();
  const bool score = own_data && comm->rank() == 0;
  DemoScore before;
  if (score) {
    std::printf("\nheld-out questions (never in the training data), before fine-tuning (greedy answers):\n");
    before = score_demo_questions(model_dir, "", conv_template, demo.held_out, kDemoShown);
    std::printf("before: %zu/%zu exact answers\n\n", before.correct, before.total);
  }
  // lr 1.5e-3 with 10 % warmup: the loss leaves its plateau after ~120-150 steps on every kernel variant tried
  // (AMX, AVX2); 500 steps leave 3x that. At 3e-3 the gradient norm spiked to ~1e3 and, depending on the CPU's
  // summation order, the plateau lasted 150 steps or more than 450.
  std::vector<std::string> targs = {"--model_name_or_path", model_dir, "--data_path", data_path,
                                    "--output_dir", run_dir, "--max_steps", steps,
                                    "--per_device_train_batch_size", "16", "--learning_rate", "1.5e-3",
                                    "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.1",
                                    "--logging_steps", "10", "--save_steps", "100", "--save_total_limit", "1",
                                    "--model_max_length", "128", "--padding", "longest", "--lora_r", "16",
                                    "--lora_alpha", "32", "--lora_dropout", "0.0", "--lora_target_modules",
                                    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                    "--conv_template", conv_template, "--resume_from_checkpoint", "False"};
  targs.insert(targs.end(), extra.begin(), extra.end());
  std::printf("zerolora train");
  for (const auto& a : targs) std::printf(" %s", a.c_str());
  std::printf("\n");
  TrainArgs args = parse_train_args(targs);
  TrainResult r = run_training(args, *comm);
  if (comm->rank() != 0) return 0;
  std::printf("\ndemo: %lld steps, mean training loss %.4f\n", (long long)r.global_step, r.train_loss);
  if (score) {
    std::printf("\nthe same held-out questions, after fine-tuning:\n");
    DemoScore after = score_demo_questions(model_dir, run_dir, conv_template, demo.held_out, kDemoShown);
    std::printf("after: %zu/%zu exact answers\n", after.correct, after.total);
    std::printf("\nheld-out exact answers: %zu/%zu before -> %zu/%zu after fine-tuning\n", before.correct,
                before.total, after.correct, after.total);
    nlohmann::json j = {{"held_out", after.total}, {"correct_before", before.correct},
                        {"correct_after", after.correct}, {"steps", r.global_step}, {"train_loss", r.train_loss}};
    io::write_file_synced((fs::path(out) / "demo_score.json").string(), j.dump(1) + "\n");
  }
  std::printf("loss curve: %s\n", (fs::path(run_dir) / "loss_curve.svg").string().c_str());
  std::printf("adapter:    %s (adapter_config.json, adapter_model.safetensors; PEFT loads it)\n", run_dir.c_str());
  std::printf("chat with it: %s chat --model_name_or_path %s --adapter %s --conv_template %s --temperature 0\n",
              self_command().c_str(), model_dir.c_str(), run_dir.c_str(), conv_template.c_str());
  return 0;
}

}  // namespace zerolora::cli
