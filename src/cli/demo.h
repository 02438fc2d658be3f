// `zerolora demo`: the README's main job, a client of the library (it lives in cli/, not in train/). With no arguments it makes everything it needs itself — a small
// random Llama model, a byte-level BPE tokenizer, a synthetic conversation set ("Repeat after me: river lamp
// stone") as FastChat JSON and 20 questions held out of it — then asks the held-out questions (the random
// model answers none), fine-tunes LoRA, asks them again (the adapter answers them), and names the loss curve,
// the adapter and the command to chat with it. The score goes to <output_dir>/demo_score.json (the test
// checks it). --model_name_or_path / --data_path point it at real files instead (no score then).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace zerolora::cli {

// Deterministic synthetic ShareGPT rows: short questions about a small invented world (colours,
// numbers, capitals) whose answers follow from the question, so a model can learn them.
std::string synthetic_conversations_json(size_t n, uint64_t seed);

// Writes a small random Llama model + a trained BPE tokenizer.json into dir, from the given corpus.
void write_demo_model(const std::string& dir, const std::vector<std::string>& corpus, uint64_t seed);

// The demo's own task: "Repeat after me: w1 w2 w3" -> "w1 w2 w3", three different words of a fixed list.
// held_out are questions whose word sequence appears nowhere in train.
struct DemoQuestion {
  std::string question, answer;
};
struct DemoData {
  nlohmann::json train;  // ShareGPT rows
  std::vector<DemoQuestion> held_out;
};
DemoData make_demo_data(size_t n_train, size_t n_held_out, uint64_t seed);
constexpr size_t kDemoTrainConversations = 2000, kDemoHeldOut = 20, kDemoShown = 6;

// Greedy answers of model_dir (+ the adapter in adapter_dir, none when empty) to the questions, in the
// generation prompt of conv_template; exact match after trimming whitespace. Prints the first `show`.
struct DemoScore {
  size_t correct = 0, total = 0;
  std::vector<std::string> answers;
};
DemoScore score_demo_questions(const std::string& model_dir, const std::string& adapter_dir,
                               const std::string& conv_template, const std::vector<DemoQuestion>& questions,
                               size_t show);

int run_demo(const std::vector<std::string>& argv);

}  // namespace zerolora::cli
